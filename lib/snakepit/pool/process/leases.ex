defmodule Snakepit.Pool.Process.Leases do
  @moduledoc false
  # The pool process's side of its argument arena (docs/architecture.md, "Arenas";
  # Snakepit.Pool.Process.Shm is the caller's side, native/snakepit/src/arena.rs the memory).
  #
  # A plain call whose large binaries a caller copied into the arena brings their leases,
  # `{offset, lease}`, which the job keeps. When the job ends they are freed, except the ones
  # whose views Python still holds: frame 12, just before the job's terminal frame, names
  # those, and they move to the worker (`kept`, by OS pid) until a later frame 12 says Python
  # let go of them, or the worker exits. After `large_data_arena_idle` ms without large data
  # the arenas give every free page back to the kernel.
  #
  # Functions take and return the pool's state; its `:leases` field is this module's.

  alias Snakepit.Pool.Process.Shm

  @doc false
  # The `:leases` field of a pool whose argument arena is `arena` ({resource, path} or nil).
  def new(nil), do: %{arena: nil, path: nil, kept: %{}, large_at: 0, armed: false, idle_ms: nil}

  def new({arena, path}) do
    {_bytes, _retain, idle} = Snakepit.Config.large_data_arena()
    %{arena: arena, path: path, kept: %{}, large_at: 0, armed: false, idle_ms: idle}
  end

  @doc false
  # The argument arena's resource (published with the pool: Registry.extra/1) and path.
  def arena(%{leases: l}), do: l.arena
  def path(%{leases: l}), do: l.path

  @doc false
  # Large data crossed: the idle check (`:arena_idle`, `idle/2`) is armed.
  def note_large(%{leases: %{arena: nil}} = state), do: state

  def note_large(%{leases: l} = state) do
    unless l.armed, do: Process.send_after(self(), :arena_idle, l.idle_ms)
    %{state | leases: %{l | large_at: System.monotonic_time(:millisecond), armed: true}}
  end

  @doc false
  # `:arena_idle`: after idle_ms without large data the argument arena gives its free pages
  # back and `trim_workers.()` asks the workers to do the same with theirs; else the check
  # waits for the rest of the interval.
  def idle(%{leases: l} = state, trim_workers) do
    quiet = System.monotonic_time(:millisecond) - l.large_at

    if quiet < l.idle_ms do
      Process.send_after(self(), :arena_idle, l.idle_ms - quiet)
      state
    else
      Snakepit.Native.arena_trim(l.arena, true)
      trim_workers.()
      %{state | leases: %{l | armed: false}}
    end
  end

  @doc false
  # Frame 12 of worker `index` (`<<id::32, n::32, kept::n*8, released>>`): the leases of job
  # `id` that Python kept move to the worker; those it let go of are freed.
  def kept_frame(state, index, <<id::32, n::32, rest::binary>>) do
    <<kept::binary-size(n * 8), released::binary>> = rest
    kept = for <<off::64 <- kept>>, do: off
    released = for <<off::64 <- released>>, do: off
    w = state.workers[index]
    held = Map.get(state.leases.kept, w.os_pid, %{})

    {state, held} =
      with tag when tag != nil <- w.jobs[id],
           %{leases: [_ | _] = leases} = job <- state.jobs[tag] do
        {now, rest} = Enum.split_with(leases, fn {off, _} -> off in kept end)
        job = %{job | leases: rest}
        {%{state | jobs: Map.put(state.jobs, tag, job)}, Map.merge(held, Map.new(now))}
      else
        _ -> {state, held}
      end

    {gone, held} = Map.split(held, released)
    release(state, Map.to_list(gone))
    # A lease a binary holds (a view of an argument returned) is freed with its last
    # reference: drop this process's now.
    if map_size(gone) > 0, do: :erlang.garbage_collect()
    put_kept(state, Map.put(state.leases.kept, w.os_pid, held))
  end

  @doc false
  # The leases a reply of job `id` of worker `w` may return a view of: the job's, and those
  # the worker kept (frame 12 came before the reply).
  def candidates(state, w, id) do
    job =
      case state.jobs[w.jobs[id]] do
        %{leases: leases} -> leases
        nil -> []
      end

    Map.to_list(Map.get(state.leases.kept, w.os_pid, %{})) ++ job
  end

  @doc false
  # The worker process `os_pid` has gone: the regions its Python held are free.
  def drop_kept(state, os_pid) do
    {held, kept} = Map.pop(state.leases.kept, os_pid, %{})
    release(state, Map.to_list(held))
    put_kept(state, kept)
  end

  @doc false
  # Frees `leases` ({offset, lease}) of the pool's argument arena.
  def release(state, leases),
    do: Enum.each(leases, fn {_off, lease} -> Shm.release_lease(lease, state.leases.arena) end)

  defp put_kept(%{leases: l} = state, kept), do: %{state | leases: %{l | kept: kept}}
end
