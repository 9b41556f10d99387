defmodule Snakepit.Application do
  @moduledoc false
  use Application

  # Snakepit.Supervisor, rest_for_one (docs/architecture.md, "Supervision"):
  #
  #   PythonLogger        Python logging -> Logger
  #   FunctionSupervisor  Task.Supervisor: the processes running Elixir functions Python calls
  #   Functions           receives those calls (Snakepit.Functions)
  #   Registry            the one writer of pool names (a restart wipes them, so all below restart)
  #   Cluster             the :pg scope pools join
  #   PoolSupervisor      DynamicSupervisor: every pool, configured or started at run time
  #   ConfiguredPools     adds `config :snakepit, pools:` to PoolSupervisor; restarted with it,
  #                       so the configured pools come back if PoolSupervisor ever restarts
  #   Reloader            only with `reload: :auto`: polls python_path, reloads pools
  # Pools are independent: a few restarts of different pools in quick succession must not
  # take PoolSupervisor (and so every pool) down, as OTP's default of 3 in 5 s would.
  @pool_restarts 10
  @pool_restart_seconds 5

  @impl true
  def start(_type, _args) do
    Snakepit.Telemetry.refresh()

    # A bad or unknown key of `config :snakepit`, or a run-time venv that is missing, fails the
    # start with an error naming it.
    with :ok <- Snakepit.Config.validate_global(),
         :ok <- Snakepit.Runtime.check_venv(),
         {:ok, pools} <- Snakepit.Config.pools() do
      children = [
        Snakepit.PythonLogger,
        {Task.Supervisor, name: Snakepit.FunctionSupervisor},
        Snakepit.Functions,
        Snakepit.Registry,
        Snakepit.Cluster,
        {DynamicSupervisor,
         name: Snakepit.PoolSupervisor,
         strategy: :one_for_one,
         max_restarts: @pool_restarts,
         max_seconds: @pool_restart_seconds},
        {Snakepit.ConfiguredPools, pools}
      ]

      children =
        case Snakepit.Config.reload() do
          {:auto, interval} -> children ++ [{Snakepit.Reloader, interval: interval}]
          {:manual, _} -> children
        end

      case Supervisor.start_link(children, strategy: :rest_for_one, name: Snakepit.Supervisor) do
        {:ok, sup} -> {:ok, sup}
        # A configured pool that cannot start fails the application with its own error.
        {:error, {:shutdown, {:failed_to_start_child, _, %Snakepit.Error{} = e}}} -> {:error, e}
        {:error, _} = error -> error
      end
    end
    |> readable()
  end

  # The reason is {exception, stacktrace}: Mix ("Could not start application snakepit: ...")
  # and the logger format it as a raised exception, so the message and a Python traceback
  # print as text, not as one inspected struct.
  defp readable({:error, %Snakepit.Error{} = e}),
    do: {:error, {e, [{__MODULE__, :start, 2, [file: ~c"lib/snakepit/application.ex"]}]}}

  defp readable(other), do: other
end
