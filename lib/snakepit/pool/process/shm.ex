defmodule Snakepit.Pool.Process.Shm do
  @moduledoc false
  # Large binaries of the :process profile through shared-memory files instead of the port
  # (docs/architecture.md, "Large data"; README, "Large data").
  #
  # Arguments: a binary of at least `min/0` bytes in a call's arguments is written (one copy,
  # `write(2)` on a dirty I/O scheduler) into a fresh file in the shm directory, and the term
  # that crosses holds `{:"$snakepit_shm", path, size}` in its place;
  # priv/python/snakepit_bridge/_shm.py maps the file read-only and unlinks it at once.
  # The caller removes its files again when the call ends (finished/3, cancel/3 of
  # Snakepit.Pool.Process: a worker that died or a call dropped from the queue never mapped
  # them); the pool removes what is left of its files when it stops.
  #
  # Results: a worker writes a large `bytes`/buffer of a reply into a fresh file and sends a
  # reply frame of kind 11 listing the files (`take_reply/3`); the pool process maps each
  # (Snakepit.Native.shm_map/1: mmap, unlink; the binary is a resource binary over the
  # mapping, unmapped when the BEAM frees it) and the reply goes to the caller as
  # `{:etf, bin, blobs}`, whose `{:"$snakepit_shm", i}` terms `resolve/2` replaces by the
  # blobs. Files of a worker that died before it sent its reply are removed when it restarts.
  #
  # File names: `snakepit-<BEAM os pid>-<pool pid>-a<n>` (arguments) and
  # `...-w<worker os pid>-<n>` (results), so a pool's and a worker's files can be found.
  #
  # Arenas (native/snakepit/src/arena.rs; docs/architecture.md, "Arenas"): when the pool has
  # an argument arena, a plain call's large binaries are copied into it instead (`{offset,
  # lease}` go to the pool with the call, which frees them when the job ends or, for views
  # Python kept, later: frame 12), and a worker's large results are in its result arena
  # ("@offset:size" in the kind-11 list) or views of an argument ("&position:size"). Files
  # remain for what does not fit, pinned and nested calls, and `large_data_arena: 0`.
  #
  # Off with `config :snakepit, large_data_shm: false`; the size from which a binary goes
  # through shared memory is `config :snakepit, large_data_shm_min: bytes` (1 MiB by default).

  @marker :"$snakepit_shm"
  @arena_marker :"$snakepit_arena"

  @doc false
  def marker, do: @marker

  # {dir, min} when the side channel is on, else nil. Read on large calls only.
  defp config do
    case :persistent_term.get({__MODULE__, :config}, :unset) do
      :unset ->
        c = compute_config()
        :persistent_term.put({__MODULE__, :config}, c)
        c

      c ->
        c
    end
  end

  defp compute_config do
    {on?, min, dir} = Snakepit.Config.large_data_shm()

    if on? and :os.type() == {:unix, :linux} and File.dir?(dir),
      do: {dir, min},
      else: nil
  end

  @doc false
  # Forgets the cached configuration (tests that change the application environment).
  def reconfigure, do: :persistent_term.erase({__MODULE__, :config})

  @doc false
  # The environment a worker of the pool `pool` (its pid) gets: SNAKEPIT_SHM=dir|prefix|min.
  def worker_env(pool) do
    case config() do
      {dir, min} -> [{~c"SNAKEPIT_SHM", String.to_charlist("#{dir}|#{prefix(pool)}|#{min}")}]
      nil -> []
    end
  end

  @doc false
  def prefix(pool) when is_pid(pool) do
    [_, a, b] = pool |> :erlang.pid_to_list() |> to_string() |> String.split(".")
    "snakepit-#{System.pid()}-#{String.trim_leading(a, "<")}.#{String.trim_trailing(b, ">")}-"
  end

  @doc false
  # The files in the shm directory that belong to pool `pool` (all of them, or those of the
  # worker with OS pid `os_pid`).
  def files(pool, os_pid \\ nil) do
    case config() do
      {dir, _} ->
        tail = if os_pid, do: "w#{os_pid}-*", else: "*"
        Path.wildcard(Path.join(dir, prefix(pool) <> tail))

      nil ->
        []
    end
  end

  @doc false
  def remove_files(pool, os_pid \\ nil), do: remove(files(pool, os_pid))

  @doc false
  def remove(paths), do: Enum.each(paths, &:file.delete/1)

  ## Arguments

  # How many terms of a call's arguments are looked at for large binaries (depth first): a
  # bound, so that a 3-million-element list costs nothing here (its binaries, if any, past
  # the first terms go through the port).
  @budget 1_000

  @doc false
  # `{args, paths, leases}`: the large binaries among the first @budget terms of `args` moved
  # out of the port for the (local) pool `server`: into its argument arena when it has one
  # and `arena?` (`{offset, lease}` in `leases`, which the pool keeps with the job), else
  # into files (`paths`). Terms without one are returned as they are (not rebuilt).
  def export_args(server, args, arena?) do
    with {dir, min} <- config(),
         pid when is_pid(pid) <- GenServer.whereis(server),
         true <- node(pid) == node() do
      # The arena is looked up at the first large binary (most calls have none).
      arena = if arena?, do: {:pool, pid}
      ctx = {min, Path.join(dir, prefix(pid) <> "a"), arena}

      try do
        {args, moved, _budget} = walk(args, ctx, [], @budget)
        {paths, leases} = Enum.split_with(moved, &is_binary/1)
        {args, paths, leases}
      catch
        {:shm_failed, moved} ->
          release(moved)
          {args, [], []}
      end
    else
      _ -> {args, [], []}
    end
  end

  defp walk(bin, {min, _, _} = ctx, acc, budget) when is_binary(bin) do
    if byte_size(bin) >= min do
      {ref, acc} = write(bin, ctx, acc)
      {ref, acc, budget - 1}
    else
      {bin, acc, budget - 1}
    end
  end

  defp walk(term, _ctx, acc, budget) when budget <= 0, do: {term, acc, 0}

  defp walk(map, ctx, acc, budget) when is_map(map) and map_size(map) < budget do
    {pairs, acc2, budget} = walk_list(:maps.to_list(map), ctx, acc, budget - 1)
    {if(acc2 == acc, do: map, else: :maps.from_list(pairs)), acc2, budget}
  end

  defp walk(tuple, ctx, acc, budget) when is_tuple(tuple) and tuple_size(tuple) < budget do
    {items, acc2, budget} = walk_list(Tuple.to_list(tuple), ctx, acc, budget - 1)
    {if(acc2 == acc, do: tuple, else: List.to_tuple(items)), acc2, budget}
  end

  defp walk([_ | _] = list, ctx, acc, budget) do
    {items, acc2, budget} = walk_list(list, ctx, acc, budget - 1)
    {if(acc2 == acc, do: list, else: items), acc2, budget}
  end

  defp walk(term, _ctx, acc, budget), do: {term, acc, budget - 1}

  # Elements while the budget lasts; the rest of the list as it is.
  defp walk_list([h | t], ctx, acc, budget) when budget > 0 do
    {h, acc, budget} = walk(h, ctx, acc, budget)
    {t, acc, budget} = walk_list(t, ctx, acc, budget)
    {[h | t], acc, budget}
  end

  defp walk_list(rest, _ctx, acc, budget), do: {rest, acc, budget}

  # Into the arena (`{:"$snakepit_arena", offset, size}` crosses), or, when there is none or
  # it is full, into a file.
  defp write(bin, {_min, _base, {:pool, pid}} = ctx, acc),
    do: write(bin, put_elem(ctx, 2, Snakepit.Registry.extra(pid)), acc)

  defp write(bin, {_min, _base, arena} = ctx, acc) when arena != nil do
    case Snakepit.Native.arena_put(arena, bin) do
      {:ok, offset, lease} -> {{@arena_marker, offset, byte_size(bin)}, [{offset, lease} | acc]}
      :full -> write(bin, put_elem(ctx, 2, nil), acc)
    end
  end

  defp write(bin, {_min, base, nil}, acc) do
    path = base <> Integer.to_string(:erlang.unique_integer([:positive]))

    case :file.write_file(path, bin, [:raw]) do
      :ok ->
        {{@marker, path, byte_size(bin)}, [path | acc]}

      {:error, _} ->
        :file.delete(path)
        throw({:shm_failed, acc})
    end
  end

  # Files removed, leases freed.
  defp release(moved) do
    Enum.each(moved, fn
      path when is_binary(path) -> :file.delete(path)
      {_offset, lease} -> release_lease(lease, nil)
    end)
  end

  ## Arenas (native/snakepit/src/arena.rs)

  @doc false
  # A new arena (`result?`: a worker's result arena) and the path a worker opens it at, or
  # nil (arenas off, no NIF, no /proc).
  def new_arena(result?) do
    with {_dir, _min} <- config(),
         {bytes, retain, _idle} when bytes > 0 <- Snakepit.Config.large_data_arena(),
         {:ok, arena, path} <- Snakepit.Native.arena_new(bytes, retain, result?),
         {:ok, fd} <- :file.open(path, [:read, :raw]) do
      :file.close(fd)
      {arena, path}
    else
      _ -> nil
    end
  rescue
    _ in [ErlangError, UndefinedFunctionError] -> nil
  end

  @doc false
  # The environment of a worker whose pool's argument arena and whose own result arena are at
  # these paths (either nil): SNAKEPIT_ARENA=args|results|retain.
  def arena_env(nil, nil), do: []

  def arena_env(args, results) do
    {_bytes, retain, _idle} = Snakepit.Config.large_data_arena()
    [{~c"SNAKEPIT_ARENA", String.to_charlist("#{args}|#{results}|#{retain}")}]
  end

  @doc false
  # Frees a lease of the argument arena `arena`, and gives the arena's surplus pages back to
  # the kernel when that left any (a dirty NIF: punching holes in tens of MB takes ms; a
  # caller that gives no arena leaves that to the pool).
  def release_lease(lease, arena) do
    if Snakepit.Native.arena_release(lease) == :trim and arena != nil,
      do: Snakepit.Native.arena_trim(arena, false)

    :ok
  end

  @doc false
  # `{regions, bytes}` in use in the argument arena of the pool process `pid`, or nil.
  def arena_usage(pid) do
    case Snakepit.Registry.extra(pid) do
      nil -> nil
      arena -> Snakepit.Native.arena_usage(arena)
    end
  end

  ## Results

  @doc false
  # A reply frame of kind 11 after its kind byte: `<<id::32, n::32, header::n, etf>>`, the
  # header the paths separated by NUL. Maps (and unlinks) every file; `{id, etf, blobs}`, or
  # `{id, :error}` when a file could not be mapped (the others are unlinked too).
  # `arena` is the worker's result arena, `leases` the `{offset, lease}` of the argument-arena
  # regions the job may return a view of (nil and [] for a worker that is retiring).
  def take_reply(<<id::32, n::32, header::binary-size(n), etf::binary>>, arena, leases) do
    mapped = header |> :binary.split(<<0>>, [:global]) |> Enum.map(&map_file(&1, arena, leases))

    if Enum.all?(mapped, &match?({:ok, _}, &1)),
      do: {id, etf, List.to_tuple(Enum.map(mapped, &elem(&1, 1)))},
      else: {id, :error}
  end

  # "&position:length": a view of an argument, in the argument arena at `position`: a binary
  # over the lease whose region holds it (no copy).
  defp map_file("&" <> region, _arena, leases) do
    region_binary(region, fn pos, len ->
      case Enum.find(Enum.sort(leases, :desc), fn {off, _} -> off <= pos end) do
        {off, lease} -> Snakepit.Native.arena_lease_binary(lease, pos - off, len)
        nil -> :error
      end
    end)
  end

  # "@offset:length": a region of the worker's result arena.
  defp map_file("@" <> region, arena, _leases),
    do: region_binary(region, &Snakepit.Native.arena_binary(arena, &1, &2))

  defp map_file(path, _arena, _leases) do
    Snakepit.Native.shm_map(path)
  rescue
    # No NIF (it could not be loaded): read the file (a copy) instead.
    _ in [ErlangError, UndefinedFunctionError] ->
      result = File.read(path)
      :file.delete(path)
      result
  end

  # `{:ok, binary}` from `make.(position, length)` of "position:length", or :error.
  defp region_binary(region, make) do
    with [a, b] <- :binary.split(region, ":"),
         {:ok, _} = ok <- make.(String.to_integer(a), String.to_integer(b)) do
      ok
    else
      _ -> :error
    end
  rescue
    _ in [ArgumentError, ErlangError, UndefinedFunctionError] -> :error
  end

  @doc false
  # The reply term with every `{:"$snakepit_shm", i}` replaced by blob i.
  def resolve(term, blobs) when is_tuple(blobs) and tuple_size(blobs) > 0,
    do: put(term, blobs)

  def resolve(term, _blobs), do: term

  defp put({@marker, i}, blobs) when is_integer(i) and i >= 0 and i < tuple_size(blobs),
    do: elem(blobs, i)

  defp put(map, blobs) when is_map(map),
    do: :maps.map(fn _k, v -> put(v, blobs) end, map)

  defp put([h | t], blobs), do: [put(h, blobs) | put(t, blobs)]

  defp put(tuple, blobs) when is_tuple(tuple),
    do: tuple |> Tuple.to_list() |> Enum.map(&put(&1, blobs)) |> List.to_tuple()

  defp put(term, _blobs), do: term
end
