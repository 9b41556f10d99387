defmodule Snakepit.ConfiguredPools do
  @moduledoc false
  # Starts the pools of `config :snakepit, pools:` under Snakepit.PoolSupervisor, in order,
  # when the application starts and again whenever Snakepit.Supervisor restarts it together
  # with PoolSupervisor. Each pool is an ordinary permanent child there: a pool that crashes or
  # is killed is restarted by PoolSupervisor with its config, and `Snakepit.stop_pool/1` stops
  # it for good.
  use GenServer

  def child_spec(pools), do: %{id: __MODULE__, start: {__MODULE__, :start_link, [pools]}}

  def start_link(pools), do: GenServer.start_link(__MODULE__, pools)

  @impl true
  def init(pools) do
    Enum.reduce_while(pools, {:ok, pools}, fn pool, ok ->
      case Snakepit.start_pool(pool) do
        {:ok, _pid} -> {:cont, ok}
        # Already running: this is a restart of ConfiguredPools alone, the pool survived it.
        {:error, %Snakepit.Error{details: %{reason: :already_running}}} -> {:cont, ok}
        {:error, e} -> {:halt, {:stop, e}}
      end
    end)
  end
end
