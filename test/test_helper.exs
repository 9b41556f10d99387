# Fail fast when the NIF did not build or load.
Code.ensure_loaded!(Snakepit.Native)

{:ok, info} = Snakepit.python_info()
IO.puts("Python #{info.version} (free-threaded: #{info.free_threaded}) at #{info.executable}")

exclude = if System.get_env("SNAKEPIT_INTEGRATION") == "1", do: [], else: [:integration]

# worker_profile :subinterpreter needs CPython >= 3.12 (a GIL per interpreter).
exclude =
  if Snakepit.Pool.Subinterpreter.supported?(info.version) do
    exclude
  else
    IO.puts(
      "Skipping the :subinterpreter profile's tests (tag :subinterpreter): they need " <>
        "CPython 3.12 or later, the NIF is built for #{info.version}"
    )

    [:subinterpreter | exclude]
  end

ExUnit.start(exclude: exclude, capture_log: true)
