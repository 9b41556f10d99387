defmodule Snakepit.Adapters.Python do
  @moduledoc """
  The adapter module of every pool: Python adapter classes run by Snakepit's NIF.

  The Python class comes from the pool's `:adapter` key (or `--adapter` in `adapter_args`),
  default `#{Snakepit.Config.__struct__().adapter}`.
  `Snakepit.Adapters.GRPCPython`, the name upstream Snakepit configurations use, is an alias.
  """
end

defmodule Snakepit.Adapters.GRPCPython do
  @moduledoc """
  Alias of `Snakepit.Adapters.Python`, so configurations written for upstream Snakepit (and the
  threaded-workers guide) work unchanged. No gRPC is involved: the NIF runs Python in-process.
  """
end
