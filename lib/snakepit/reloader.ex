defmodule Snakepit.Reloader do
  @moduledoc """
  Reloading edited Python code without restarting the VM: `Snakepit.reload/1,2` and, for
  development, `config :snakepit, reload: :auto`.

  A reload replaces every worker's adapter instance the way recycling does: calls in flight
  finish on the old instance, then its `cleanup()` runs; new calls go to the new instances.

    * `:thread` pools re-import the adapter's module and the modules under `:python_path`
      whose files changed since they were imported (in import order, so a module is re-imported
      after the modules it imports), then build a fresh instance per worker. Snakepit's own
      package and installed packages are never re-imported. All pools of the node share the
      interpreter, so a module re-imported for one pool is new for every pool; each pool gets
      new instances only when it is reloaded.
    * `:process` pools start a probe worker with the new code first, then replace their worker
      processes one at a time (a fresh process imports everything anew).

  A reload that fails — a `SyntaxError`, an exception at module level or in `__init__` —
  returns `{:error, %Snakepit.Error{}}` with the Python traceback, and the current instances go
  on serving. (In the `:thread` profile, modules re-imported before the failure stay
  re-imported; fix the file and reload again.)

  ## `reload: :auto`

      # config/dev.exs
      config :snakepit, reload: :auto

  A process under Snakepit's supervisor looks at the `.py` files under `:python_path` every
  `:reload_interval` ms (default 1000; modification time, size and inode, so no file-system
  watcher is needed) and reloads each running pool whose adapter depends on a changed file —
  its module, and the modules it (transitively) imports from `:python_path` — with one log line
  per pool. Not meant for production.
  """
  use GenServer
  require Logger

  alias Snakepit.{Config, Error, Registry}

  @default_timeout 60_000

  @doc """
  Reloads pool `pool` (see the moduledoc). Options: `:timeout` (ms, default
  #{@default_timeout}) for the whole reload.
  """
  @spec reload(atom(), keyword()) :: :ok | {:error, Error.t()}
  def reload(pool, opts \\ []) do
    with {:ok, modules} <- run(pool, opts) do
      Logger.info("snakepit: reloaded pool #{inspect(pool)}#{describe(modules)}")
    end
  end

  defp run(pool, opts) do
    timeout = Keyword.get(opts, :timeout, @default_timeout)

    with {:ok, {mod, handle}} <- Registry.lookup(pool) do
      case mod.reload(handle, Config.python_path(), timeout) do
        {:ok, modules} ->
          {:ok, modules}

        {:error, %Error{} = e} ->
          {:error, %{e | message: "reload of pool #{inspect(pool)} failed: #{e.message}"}}
      end
    end
  end

  @doc """
  Reloads every pool running in this node. `:ok`, or a `:pool` error naming the pools that
  failed, with each one's error under `details.errors`.
  """
  @spec reload_all(keyword()) :: :ok | {:error, Error.t()}
  def reload_all(opts \\ []) do
    failed =
      for pool <- Registry.running(),
          {:error, %Error{} = e} <- [reload(pool, opts)],
          do: {pool, e}

    case failed do
      [] ->
        :ok

      failed ->
        {:error,
         Error.new(
           :pool,
           Enum.map_join(failed, "\n\n", fn {_pool, e} -> Exception.message(e) end),
           details: %{errors: Map.new(failed)}
         )}
    end
  end

  defp describe(:all), do: " (new worker processes)"
  defp describe([]), do: ""
  defp describe(modules), do: " (re-imported #{Enum.join(modules, ", ")})"

  ## reload: :auto

  @doc false
  def child_spec(opts),
    do: %{id: __MODULE__, start: {__MODULE__, :start_link, [opts]}, restart: :permanent}

  @doc false
  def start_link(opts), do: GenServer.start_link(__MODULE__, opts, name: __MODULE__)

  @impl true
  def init(opts) do
    interval = Keyword.fetch!(opts, :interval)
    state = %{interval: interval, files: scan(roots())}
    Process.send_after(self(), :poll, interval)
    {:ok, state}
  end

  @impl true
  def handle_info(:poll, state) do
    files = scan(roots())

    case changed(state.files, files) do
      [] -> :ok
      changed -> reload_dependents(changed)
    end

    Process.send_after(self(), :poll, state.interval)
    {:noreply, %{state | files: files}}
  end

  def handle_info(_other, state), do: {:noreply, state}

  defp roots, do: Config.python_path()

  # path => {mtime, size, inode} of every .py file under the roots.
  defp scan(roots) do
    for root <- roots,
        path <- Path.wildcard(Path.join(root, "**/*.py")),
        {:ok, %File.Stat{mtime: mtime, size: size, inode: inode}} <-
          [File.stat(path, time: :posix)],
        into: %{},
        do: {Path.expand(path), {mtime, size, inode}}
  end

  defp changed(before, now) do
    for {path, stamp} <- now, Map.get(before, path) != stamp, do: path
  end

  # Asks every pool which files its adapter depends on (before any is reloaded: a shared module
  # re-imported for one pool must still count for the others), then reloads the concerned ones.
  defp reload_dependents(changed) do
    roots = roots()

    concerned =
      for pool <- Registry.running(),
          {:ok, files} <- [dependencies(pool, roots)],
          hit = Enum.find(changed, &(&1 in files)),
          do: {pool, hit}

    for {pool, path} <- concerned do
      case run(pool, []) do
        {:ok, modules} ->
          Logger.info(
            "snakepit: reloaded pool #{inspect(pool)} after a change to " <>
              "#{Path.relative_to_cwd(path)}#{describe(modules)}"
          )

        {:error, %Error{} = e} ->
          Logger.error(
            "snakepit: #{Path.relative_to_cwd(path)} changed; " <> Exception.message(e)
          )
      end
    end
  end

  defp dependencies(pool, roots) do
    with {:ok, files} <-
           Snakepit.execute(pool, "__snakepit_dependencies__", %{roots: roots}, timeout: 10_000) do
      {:ok, Enum.map(files, &Path.expand/1)}
    end
  end
end
