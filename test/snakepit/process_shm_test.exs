# Large data of the process profiles through shared memory (Snakepit.Pool.Process.Shm,
# priv/python/snakepit_bridge/_shm.py, native/snakepit/src/arena.rs; docs/architecture.md,
# "Large data"), through the arenas (the default) and through files (`large_data_arena: 0`):
# the bytes and the Python-side types are those of the port path, the threshold is where it
# switches, and no file or arena region is left behind when a worker dies, a queued call
# times out or Python lets go of a view it kept.

defmodule Snakepit.ProcessShmCase do
  @moduledoc false
  use ExUnit.CaseTemplate

  using opts do
    profile = Keyword.fetch!(opts, :profile)
    arena = Keyword.get(opts, :arena, true)

    quote do
      import Snakepit.ConformanceCase,
        only: [start!: 2, call: 4, call: 5, capacity: 2, wait_for: 1]

      import Snakepit.ProcessShmCase
      alias Snakepit.Pool.Process.Shm

      @moduletag profile: unquote(profile)
      @adapter "snakepit_shm_adapters.ShmAdapter"
      @min 1_048_576

      @arena unquote(arena)

      setup do
        unless @arena do
          Application.put_env(:snakepit, :large_data_arena, 0)
          on_exit(fn -> Application.delete_env(:snakepit, :large_data_arena) end)
        end

        profile = unquote(profile)
        pool = start!(profile, [adapter: @adapter] ++ capacity(profile, 2))
        {pid, _, _} = Snakepit.Registry.entry(pool)
        {:ok, profile: profile, pool: pool, pid: pid}
      end

      test "large arguments: the bytes and the Python types of the port path", ctx do
        big = pattern(3 * @min)
        n = byte_size(big)

        assert {:ok, %{"type" => "memoryview", "base" => base, "readonly" => true, "len" => ^n}} =
                 call(ctx.profile, ctx.pool, "kind_of", %{value: {:buffer, big}})

        assert shared?(base, @arena)

        assert {:ok, ^big} = call(ctx.profile, ctx.pool, "same", %{buf: {:buffer, big}})

        assert {:ok, %{"type" => "bytes", "len" => ^n}} =
                 call(ctx.profile, ctx.pool, "kind_of", %{value: {:bytes, big}})

        # Plain binaries: bytes when not UTF-8, str when UTF-8, as through the port.
        assert {:ok, %{"type" => "bytes", "len" => ^n}} =
                 call(ctx.profile, ctx.pool, "kind_of", %{value: big})

        text = :binary.copy("snake ", div(2 * @min, 6))
        t = byte_size(text)

        assert {:ok, %{"type" => "str", "len" => ^t}} =
                 call(ctx.profile, ctx.pool, "kind_of", %{value: text})

        assert {:ok, [1, %{"k" => {^text}}]} =
                 call(ctx.profile, ctx.pool, "echo", %{value: [1, %{k: {text}}]})

        # Only the first terms are looked at: a binary further on goes through the port.
        long = List.duplicate(1, 5_000)

        for value <- [[big | long], long ++ [big]] do
          assert {:ok, ^value} = call(ctx.profile, ctx.pool, "echo", %{value: value})
        end

        floats = 300_000
        array = Snakepit.NDArray.new(ones(floats), {:f, 64}, {floats})

        assert {:ok, %{"type" => "ndarray", "writeable" => false, "sum" => sum}} =
                 call(ctx.profile, ctx.pool, "kind_of", %{value: array})

        assert sum == floats * 1.0
        assert Shm.files(ctx.pid) == []
      end

      test "large results: the bytes, over a mapping (not a copy)", ctx do
        n = 3 * @min + 17

        for kind <- ["bytes", "bytearray", "memoryview"] do
          assert {:ok, bin} = call(ctx.profile, ctx.pool, "make_bytes", %{n: n, kind: kind})
          assert bin == made_bytes(n)
          assert mapped?(bin)
        end

        floats = 200_000

        assert {:ok, %Snakepit.NDArray{dtype: {:f, 64}, shape: {^floats}, data: data}} =
                 call(ctx.profile, ctx.pool, "arange", %{n: floats}, ndarray: :struct)

        assert data == for(i <- 0..(floats - 1), into: <<>>, do: <<i * 1.0::float-64-native>>)
        assert mapped?(data)

        # A large NDArray both ways: Python doubles it (a new array).
        array = Snakepit.NDArray.new(ones(floats), {:f, 64}, {floats})

        assert {:ok, %Snakepit.NDArray{data: doubled}} =
                 call(ctx.profile, ctx.pool, "double", %{a: array}, ndarray: :struct)

        assert doubled == :binary.copy(<<2.0::float-64-native>>, floats)
        assert Shm.files(ctx.pid) == []
      end

      test "200 concurrent callers each get their own large binary back", ctx do
        results =
          1..200
          |> Task.async_stream(
            fn i ->
              bin = :binary.copy(<<i, 255 - i>>, div(@min, 2) + i)
              {bin, call(ctx.profile, ctx.pool, "same", %{buf: {:buffer, bin}}, timeout: 120_000)}
            end,
            max_concurrency: 200,
            timeout: 180_000
          )
          |> Enum.map(fn {:ok, r} -> r end)

        assert length(results) == 200
        for {bin, reply} <- results, do: assert({:ok, ^bin} = reply)
        assert Shm.files(ctx.pid) == []
      end

      test "the threshold: just under goes through the port, from it through a file", ctx do
        for {size, mapped} <- [{@min - 1, false}, {@min, true}] do
          assert {:ok, %{"base" => base, "len" => ^size}} =
                   call(ctx.profile, ctx.pool, "kind_of", %{value: {:buffer, pattern(size)}})

          assert if(mapped, do: shared?(base, @arena), else: base == "bytes")

          assert {:ok, bin} = call(ctx.profile, ctx.pool, "make_bytes", %{n: size})
          assert bin == made_bytes(size)
          assert mapped?(bin) == mapped
        end
      end

      test "a tiny payload uses the port", ctx do
        assert {:ok, %{"base" => "bytes", "len" => 3}} =
                 call(ctx.profile, ctx.pool, "kind_of", %{value: {:buffer, "abc"}})

        assert {:ok, "abc"} = call(ctx.profile, ctx.pool, "same", %{buf: {:buffer, "abc"}})
      end

      test "a worker killed while it holds a large argument leaves no file", ctx do
        gate = gate()

        task =
          Task.async(fn ->
            call(ctx.profile, ctx.pool, "blocked_len", %{
              buf: {:buffer, pattern(2 * @min)},
              gate: gate
            })
          end)

        assert wait_for(fn -> busy(ctx.pool) == 1 end)
        [os_pid | _] = for w <- workers(ctx.pool), w.busy == 1, do: w.os_pid
        {_, 0} = System.cmd("kill", ["-9", to_string(os_pid)])

        assert {:error, %Snakepit.Error{category: :worker}} = Task.await(task, 30_000)
        assert Shm.files(ctx.pid) == []
      end

      test "a queued call that times out leaves no file or arena region", ctx do
        # Every thread blocked, so the next call waits in the pool's queue.
        gate = gate()

        blocked =
          for _ <- 1..2 do
            Task.async(fn ->
              call(ctx.profile, ctx.pool, "blocked_len", %{buf: "x", gate: gate})
            end)
          end

        assert wait_for(fn -> busy(ctx.pool) == 2 end)

        queued =
          Task.async(fn ->
            call(ctx.profile, ctx.pool, "kind_of", %{value: {:buffer, pattern(2 * @min)}},
              timeout: 2_000
            )
          end)

        # Its argument is in the arena or a file while it waits.
        assert wait_for(fn -> held(ctx.pid, @arena) == {1, 2 * @min} end)
        assert {:error, %Snakepit.Error{category: :timeout}} = Task.await(queued, 30_000)
        assert wait_for(fn -> held(ctx.pid, @arena) == {0, 0} end)

        File.write!(gate, "")
        for t <- blocked, do: assert({:ok, 1} = Task.await(t, 30_000))
      end

      if unquote(arena) do
        test "a view Python keeps holds its region, unchanged, until Python lets go", ctx do
          kept = pattern(2 * @min)
          assert {:ok, _} = call(ctx.profile, ctx.pool, "keep", %{buf: {:buffer, kept}})
          assert Shm.arena_usage(ctx.pid) == {1, 2 * @min}

          # Other large arguments meanwhile go elsewhere in the arena.
          for i <- 1..5 do
            other = {:buffer, :binary.copy(<<i>>, 2 * @min)}

            assert {:ok, %{"len" => len}} =
                     call(ctx.profile, ctx.pool, "kind_of", %{value: other})

            assert len == 2 * @min
          end

          assert {:ok, head} = call(ctx.profile, ctx.pool, "kept_head", %{})
          assert head == binary_part(kept, 1, 64)
          assert Shm.arena_usage(ctx.pid) == {1, 2 * @min}

          assert {:ok, true} = call(ctx.profile, ctx.pool, "drop_kept", %{})
          assert Shm.arena_usage(ctx.pid) == {0, 0}
        end

        test "an argument returned as it came is a binary over its region, no copy", ctx do
          big = pattern(2 * @min)

          holder =
            Task.async(fn ->
              assert {:ok, back} = call(ctx.profile, ctx.pool, "same", %{buf: {:buffer, big}})
              assert back == big and mapped?(back)

              floats = 300_000
              array = Snakepit.NDArray.new(ones(floats), {:f, 64}, {floats})

              assert {:ok, %Snakepit.NDArray{data: data}} =
                       call(ctx.profile, ctx.pool, "same", %{buf: array}, ndarray: :struct)

              assert data == array.data and mapped?(data)
              # Both regions stay while the binaries live, whatever else crosses meanwhile.
              assert {:ok, %{"len" => @min}} =
                       call(ctx.profile, ctx.pool, "kind_of", %{value: {:buffer, pattern(@min)}})

              assert {2, _} = Shm.arena_usage(ctx.pid)
              receive do: (:done -> byte_size(back) + byte_size(data))
            end)

          send(holder.pid, :done)
          assert Task.await(holder, 60_000) == 2 * @min + 2_400_000
          # The holder is gone: the next call's end frees them (the pool drops its references).
          assert wait_for(fn ->
                   {:ok, _} = call(ctx.profile, ctx.pool, "kind_of", %{value: "abc"})
                   Shm.arena_usage(ctx.pid) == {0, 0}
                 end)
        end

        test "after large_data_arena_idle without large data, the arenas give their pages back",
             ctx do
          # Read when a pool starts: other pools starting meanwhile merely trim sooner.
          Application.put_env(:snakepit, :large_data_arena_idle, 300)
          pool = start!(ctx.profile, [adapter: @adapter] ++ capacity(ctx.profile, 1))
          Application.delete_env(:snakepit, :large_data_arena_idle)

          in_task = fn ->
            arg = {:buffer, pattern(4 * @min)}
            assert {:ok, %{"len" => len}} = call(ctx.profile, pool, "kind_of", %{value: arg})
            assert {:ok, bin} = call(ctx.profile, pool, "make_bytes", %{n: 4 * @min})
            assert len == 4 * @min and mapped?(bin)
            assert {:ok, pages} = call(ctx.profile, pool, "arena_pages", %{})
            pages
          end

          assert Task.await(Task.async(in_task), 60_000) >= 8 * @min
          # All but the result arena's page table (a byte per page: its first page here).
          assert wait_for(fn -> call(ctx.profile, pool, "arena_pages", %{}) == {:ok, 4096} end)
        end

        test "a killed worker's kept views free their regions", ctx do
          assert {:ok, _} =
                   call(ctx.profile, ctx.pool, "keep", %{buf: {:buffer, pattern(2 * @min)}})

          assert Shm.arena_usage(ctx.pid) == {1, 2 * @min}
          # Whichever worker holds it.
          for w <- workers(ctx.pool), do: {_, 0} = System.cmd("kill", ["-9", "#{w.os_pid}"])
          assert wait_for(fn -> Shm.arena_usage(ctx.pid) == {0, 0} end)
        end

        test "result regions are reused once the BEAM frees their binaries", ctx do
          # The binaries live in a task: they are freed when it ends.
          holder =
            Task.async(fn ->
              results =
                for _ <- 1..8 do
                  {:ok, bin} = call(ctx.profile, ctx.pool, "make_bytes", %{n: 2 * @min})
                  bin
                end

              assert Enum.all?(results, &(mapped?(&1) and &1 == made_bytes(2 * @min)))
              # Sequential calls go to the worker that was free last: it holds them all.
              assert {:ok, 8} = call(ctx.profile, ctx.pool, "result_regions", %{})
              receive do: (:done -> length(results))
            end)

          send(holder.pid, :done)
          assert Task.await(holder, 60_000) == 8

          assert wait_for(fn -> call(ctx.profile, ctx.pool, "result_regions", %{}) == {:ok, 0} end)
        end
      end

      unless unquote(arena) do
        test "a worker killed after it wrote a large result leaves no file", ctx do
          gate = gate()

          task =
            Task.async(fn ->
              call(ctx.profile, ctx.pool, "stuck_reply", %{n: 2 * @min, gate: gate})
            end)

          # The reply's bytes are in a file; its encoding is stuck after them.
          assert wait_for(fn -> Shm.files(ctx.pid) != [] end)
          [os_pid | _] = for w <- workers(ctx.pool), w.busy == 1, do: w.os_pid
          assert Shm.files(ctx.pid, os_pid) != []
          {_, 0} = System.cmd("kill", ["-9", to_string(os_pid)])

          assert {:error, %Snakepit.Error{category: :worker}} = Task.await(task, 30_000)
          assert wait_for(fn -> Shm.files(ctx.pid) == [] end)
        end
      end
    end
  end

  @doc "`{regions, bytes}` of large arguments the pool `pid` holds: in its arena, or in files."
  def held(pid, true), do: Snakepit.Pool.Process.Shm.arena_usage(pid)

  def held(pid, false) do
    sizes = for path <- Snakepit.Pool.Process.Shm.files(pid), do: File.stat!(path).size
    {length(sizes), Enum.sum(sizes)}
  end

  @doc "Its argument view's base: an arena region's exporter, or a file's mapping."
  def shared?(base, true), do: String.starts_with?(base, "c_char_Array_")
  def shared?(base, false), do: base == "mmap"

  @doc "`n` bytes that are not UTF-8."
  def pattern(n), do: binary_part(:binary.copy(<<1, 2, 3, 255>>, div(n, 4) + 1), 0, n)

  @doc "What the adapter's make_bytes(n) returns: i % 251 for i in range(n)."
  def made_bytes(n) do
    block = for i <- 0..250, into: <<>>, do: <<i>>
    binary_part(:binary.copy(block, div(n, 251) + 1), 0, n)
  end

  def ones(n), do: :binary.copy(<<1.0::float-64-native>>, n)

  # A binary that owns its bytes elsewhere (a resource binary over a mapping): not the copy
  # binary_to_term makes, whose referenced size is its own.
  def mapped?(bin), do: :binary.referenced_byte_size(bin) != byte_size(bin)

  def workers(pool), do: elem(Snakepit.stats(pool), 1).workers
  def busy(pool), do: elem(Snakepit.stats(pool), 1).active_requests

  # A file that does not exist yet: the adapter's blocking calls wait until it does.
  def gate do
    path = Path.join(System.tmp_dir!(), "snakepit-shm-gate-#{System.unique_integer([:positive])}")
    ExUnit.Callbacks.on_exit(fn -> File.rm(path) end)
    path
  end
end

defmodule Snakepit.ProcessShmTest do
  use Snakepit.ProcessShmCase, profile: :process, async: true
end

defmodule Snakepit.ProcessThreadedShmTest do
  use Snakepit.ProcessShmCase, profile: :process_threaded, async: true
end

defmodule Snakepit.ProcessFileShmTest do
  # Through files: the configuration is global, so these run alone.
  use Snakepit.ProcessShmCase, profile: :process, arena: false, async: false
end
