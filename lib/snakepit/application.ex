defmodule Snakepit.Application do
  @moduledoc false
  use Application

  @impl true
  def start(_type, _args) do
    Snakepit.Telemetry.refresh()

    children = [
      Snakepit.PythonLogger,
      Snakepit.Cluster,
      {DynamicSupervisor, name: Snakepit.PoolSupervisor, strategy: :one_for_one}
    ]

    with {:ok, sup} <-
           Supervisor.start_link(children, strategy: :one_for_one, name: Snakepit.Supervisor),
         {:ok, pools} <- Snakepit.Config.pools(),
         :ok <- start_pools(pools) do
      {:ok, sup}
    end
  end

  defp start_pools(pools) do
    Enum.reduce_while(pools, :ok, fn pool, :ok ->
      case Snakepit.start_pool(pool) do
        {:ok, _pid} -> {:cont, :ok}
        {:error, e} -> {:halt, {:error, e}}
      end
    end)
  end
end
