defmodule Snakepit.ReloadTest do
  # Snakepit.reload/1 in every profile, on adapter files written to a temporary directory that
  # is put on :python_path (global config, so not async). Each test writes modules of its own
  # names: the :thread profile's interpreter is shared by the whole suite.
  use ExUnit.Case, async: false
  require Logger

  import ExUnit.CaptureLog
  import Snakepit.ConformanceCase, only: [capacity: 2, worker_profile: 1, release_file: 0]

  alias Snakepit.Error

  setup_all do
    %{dir: Snakepit.PoolCase.python_dir!("reload")}
  end

  # The adapter module `name` (importing helper module `helper`) at `version`; `init` is extra
  # code for __init__.
  defp write_adapter(dir, name, helper, version, init \\ "pass") do
    File.write!(Path.join(dir, "#{name}.py"), """
    import os
    import time

    from snakepit_bridge import ThreadSafeAdapter, send, tool

    import #{helper} as helper


    class Adapter(ThreadSafeAdapter):
        __thread_safe__ = True
        VERSION = #{version}

        def __init__(self):
            super().__init__()
            self.watcher = None
            #{init}

        @tool(description="The versions of this module and of its helper.")
        def version(self):
            return {"version": self.VERSION, "helper": helper.VALUE}

        @tool(description="Tell pid, then wait for path to exist; return the version.")
        def hold(self, pid, path):
            send(pid, ("holding", self.VERSION))
            while not os.path.exists(path):
                time.sleep(0.005)
            return self.VERSION

        @tool(description="cleanup() tells pid.")
        def watch(self, pid):
            self.watcher = pid
            return True

        def cleanup(self):
            if self.watcher is not None:
                send(self.watcher, ("cleanup", self.VERSION))
    """)
  end

  defp write_helper(dir, helper, value),
    do: File.write!(Path.join(dir, "#{helper}.py"), "VALUE = #{inspect(value)}\n")

  defp start(profile, adapter, capacity \\ 2) do
    name = :"reload_#{profile}_#{System.unique_integer([:positive])}"

    opts =
      [name: name, adapter: "#{adapter}.Adapter", worker_profile: worker_profile(profile)] ++
        capacity(profile, capacity)

    {:ok, _} = Snakepit.start_pool(opts)
    on_exit(fn -> Snakepit.stop_pool(name) end)
    name
  end

  defp names(profile) do
    n = System.unique_integer([:positive])
    {"reload_adapter_#{profile}_#{n}", "reload_helper_#{profile}_#{n}"}
  end

  for profile <- [:thread, :process, :process_threaded] do
    describe "#{profile}:" do
      @describetag profile: profile

      test "an edited adapter and its edited helper module serve after reload", ctx do
        {adapter, helper} = names(ctx.profile)
        write_helper(ctx.dir, helper, "one")
        write_adapter(ctx.dir, adapter, helper, 1)
        pool = start(ctx.profile, adapter)

        assert {:ok, %{"version" => 1, "helper" => "one"}} =
                 Snakepit.execute(pool, "version", %{})

        write_helper(ctx.dir, helper, "two, longer")
        write_adapter(ctx.dir, adapter, helper, 2)
        assert :ok = Snakepit.reload(pool)

        for _ <- 1..10 do
          assert {:ok, %{"version" => 2, "helper" => "two, longer"}} =
                   Snakepit.execute(pool, "version", %{})
        end

        # Nothing changed: a reload still works and changes nothing.
        assert :ok = Snakepit.reload(pool)
        assert {:ok, %{"version" => 2}} = Snakepit.execute(pool, "version", %{})
      end

      test "a call in flight finishes on the old instance, whose cleanup() then runs", ctx do
        {adapter, helper} = names(ctx.profile)
        write_helper(ctx.dir, helper, 0)
        write_adapter(ctx.dir, adapter, helper, 1)
        # One worker, so its one instance reports its cleanup (two threads where they fit).
        pool = start(ctx.profile, adapter, if(ctx.profile == :process, do: 1, else: 2))
        assert {:ok, true} = Snakepit.execute(pool, "watch", %{pid: self()})

        path = release_file()
        me = self()
        held = Task.async(fn -> Snakepit.execute(pool, "hold", %{pid: me, path: path}) end)
        assert_receive {"holding", 1}, 30_000

        write_adapter(ctx.dir, adapter, helper, 2)
        reload = Task.async(fn -> Snakepit.reload(pool) end)

        # :thread answers once the new instances are in place, while the old one still runs the
        # held call; :process replaces a worker only once it is idle.
        if ctx.profile == :thread do
          assert :ok = Task.await(reload, 60_000)
          assert {:ok, %{"version" => 2}} = Snakepit.execute(pool, "version", %{})
          refute_received {"cleanup", 1}
        end

        File.write!(path, "")
        assert {:ok, 1} = Task.await(held, 60_000)
        if ctx.profile != :thread, do: assert(:ok = Task.await(reload, 60_000))

        assert_receive {"cleanup", 1}, 30_000
        assert {:ok, %{"version" => 2}} = Snakepit.execute(pool, "version", %{})
      end

      test "a syntax error fails the reload with the traceback; the old code keeps serving",
           ctx do
        {adapter, helper} = names(ctx.profile)
        write_helper(ctx.dir, helper, "ok")
        write_adapter(ctx.dir, adapter, helper, 1)
        pool = start(ctx.profile, adapter)

        File.write!(Path.join(ctx.dir, "#{helper}.py"), "VALUE = (\n")

        assert {:error, %Error{} = e} = Snakepit.reload(pool)
        assert e.message =~ "reload of pool #{inspect(pool)} failed"
        assert e.python_type == "SyntaxError"
        assert e.python_traceback =~ "#{helper}.py"
        assert {:ok, %{"version" => 1, "helper" => "ok"}} = Snakepit.execute(pool, "version", %{})

        # Fixed, the next reload takes it.
        write_helper(ctx.dir, helper, "fixed")
        write_adapter(ctx.dir, adapter, helper, 3)
        assert :ok = Snakepit.reload(pool)

        assert {:ok, %{"version" => 3, "helper" => "fixed"}} =
                 Snakepit.execute(pool, "version", %{})
      end

      test "an exception in __init__ fails the reload; the old instances keep serving", ctx do
        {adapter, helper} = names(ctx.profile)
        write_helper(ctx.dir, helper, "ok")
        write_adapter(ctx.dir, adapter, helper, 1)
        pool = start(ctx.profile, adapter)

        write_adapter(ctx.dir, adapter, helper, 2, ~s[raise RuntimeError("no model file")])
        assert {:error, %Error{} = e} = Snakepit.reload(pool)
        assert e.python_type == "RuntimeError"
        assert e.message =~ "no model file"
        assert e.python_traceback =~ "__init__"

        for _ <- 1..5 do
          assert {:ok, %{"version" => 1}} = Snakepit.execute(pool, "version", %{})
        end
      end
    end
  end

  describe "reload/0 and errors" do
    test "reload/0 reloads every pool; an unknown pool is a :pool error", ctx do
      {adapter, helper} = names(:all)
      write_helper(ctx.dir, helper, 1)
      write_adapter(ctx.dir, adapter, helper, 1)
      pools = for p <- [:thread, :process], do: start(p, adapter)
      write_adapter(ctx.dir, adapter, helper, 2)
      assert :ok = Snakepit.reload()

      for pool <- pools,
          do: assert({:ok, %{"version" => 2}} = Snakepit.execute(pool, "version", %{}))

      assert {:error, %Error{category: :pool}} = Snakepit.reload(:no_such_pool_here)
    end

    test "reload: :auto reloads the pools that depend on a changed file", ctx do
      {adapter, helper} = names(:auto)
      {other, other_helper} = names(:auto_other)
      write_helper(ctx.dir, helper, "a")
      write_adapter(ctx.dir, adapter, helper, 1)
      write_helper(ctx.dir, other_helper, "b")
      write_adapter(ctx.dir, other, other_helper, 1)
      watched = start(:thread, adapter)
      untouched = start(:process, other)
      {:ok, reloader} = GenServer.start_link(Snakepit.Reloader, interval: 50)
      # The suite logs warnings and up; the reload lines are :info.
      Logger.put_module_level(Snakepit.Reloader, :info)
      on_exit(fn -> Logger.delete_module_level(Snakepit.Reloader) end)

      log =
        capture_log([level: :info], fn ->
          write_helper(ctx.dir, helper, "changed helper")

          assert Snakepit.ConformanceCase.wait_for(fn ->
                   match?(
                     {:ok, %{"helper" => "changed helper"}},
                     Snakepit.execute(watched, "version", %{})
                   )
                 end)

          GenServer.stop(reloader)
        end)

      assert log =~ "reloaded pool #{inspect(watched)} after a change to"
      assert log =~ "#{helper}.py"
      refute log =~ "reloaded pool #{inspect(untouched)}"
      assert {:ok, %{"helper" => "b"}} = Snakepit.execute(untouched, "version", %{})
    end
  end
end
