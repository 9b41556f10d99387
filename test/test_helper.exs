# Fail fast when the NIF did not build or load.
Code.ensure_loaded!(Snakepit.Native)

{:ok, info} = Snakepit.python_info()
IO.puts("Python #{info.version} (free-threaded: #{info.free_threaded}) at #{info.executable}")

exclude = if System.get_env("SNAKEPIT_INTEGRATION") == "1", do: [], else: [:integration]
ExUnit.start(exclude: exclude, capture_log: true)
