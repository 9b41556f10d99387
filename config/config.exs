import Config

# The pool of the threaded-workers guide, exactly as it writes it: 4 workers x 16 threads.
config :snakepit,
  pools: [
    %{
      name: :hpc_pool,
      worker_profile: :thread,
      pool_size: 4,
      threads_per_worker: 16,
      adapter_module: Snakepit.Adapters.GRPCPython,
      adapter_args: ["--mode", "threaded", "--max-workers", "16"],
      adapter_env: [
        {"OPENBLAS_NUM_THREADS", "16"},
        {"OMP_NUM_THREADS", "16"}
      ]
    }
  ]

# In a checkout, the project's own venv (made by `make setup`) is the Python to build for.
venv_python = Path.expand("../.venv/bin/python", __DIR__)

if File.exists?(venv_python) do
  config :snakepit, python: venv_python
end

import_config "#{config_env()}.exs"
