defmodule Snakepit.Native do
  @moduledoc false
  # NIF stubs. The only caller is Snakepit.Runtime / Snakepit.Pool / Snakepit.
  # The NIFs are in native/snakepit/src/nif.rs: one that can fail answers `{:ok, value}` or
  # `{:error, map}` (`start_runtime` answers `{:ok, {}}`); `stop_pool` answers the list of
  # threads still running, `[{name, reason}]`.

  @on_load :load_nif

  def load_nif do
    path = Path.join(:code.priv_dir(:snakepit), "nif/libsnakepit")

    case :erlang.load_nif(String.to_charlist(path), 0) do
      :ok ->
        :ok

      {:error, {reason, text}} ->
        IO.warn("snakepit: cannot load the NIF at #{path}.so (#{reason}): #{text}", [])
        :ok
    end
  end

  def start_runtime(_config), do: :erlang.nif_error(:nif_not_loaded)
  def python_info, do: :erlang.nif_error(:nif_not_loaded)
  def start_pool(_config), do: :erlang.nif_error(:nif_not_loaded)
  def stop_pool(_pool, _grace_ms), do: :erlang.nif_error(:nif_not_loaded)
  def reload(_pool, _roots), do: :erlang.nif_error(:nif_not_loaded)
  def submit(_pool, _ref, _command, _args), do: :erlang.nif_error(:nif_not_loaded)

  def submit_stream(_pool, _ref, _command, _args, _window),
    do: :erlang.nif_error(:nif_not_loaded)

  def stream_demand(_job, _n), do: :erlang.nif_error(:nif_not_loaded)
  def cancel(_job), do: :erlang.nif_error(:nif_not_loaded)
  def stats(_pool), do: :erlang.nif_error(:nif_not_loaded)
  def tools(_pool), do: :erlang.nif_error(:nif_not_loaded)
  def build_info, do: :erlang.nif_error(:nif_not_loaded)

  # Object refs (native/snakepit/src/refs.rs).
  def ref_release(_resource), do: :erlang.nif_error(:nif_not_loaded)
  def ref_counts, do: :erlang.nif_error(:nif_not_loaded)
  def ref_watch(_pid, _message), do: :erlang.nif_error(:nif_not_loaded)
  def ref_watch_fire(_watch), do: :erlang.nif_error(:nif_not_loaded)

  # Large results of :process workers (native/snakepit/src/shm.rs).
  def shm_map(_path), do: :erlang.nif_error(:nif_not_loaded)

  # Shared-memory arenas of :process pools (native/snakepit/src/arena.rs).
  def arena_new(_bytes, _retain, _result), do: :erlang.nif_error(:nif_not_loaded)
  def arena_put(_arena, _binary), do: :erlang.nif_error(:nif_not_loaded)
  def arena_release(_lease), do: :erlang.nif_error(:nif_not_loaded)
  def arena_trim(_arena, _all), do: :erlang.nif_error(:nif_not_loaded)
  def arena_binary(_arena, _offset, _length), do: :erlang.nif_error(:nif_not_loaded)
  def arena_usage(_arena), do: :erlang.nif_error(:nif_not_loaded)
  def arena_lease_binary(_lease, _at, _length), do: :erlang.nif_error(:nif_not_loaded)

  # Python calling Elixir (native/snakepit/src/callback.rs).
  def set_function_dispatcher(_pid), do: :erlang.nif_error(:nif_not_loaded)
  def function_reply(_id, _reply), do: :erlang.nif_error(:nif_not_loaded)

  def submit_nested(_pool, _chain, _ref, _command, _args, _window),
    do: :erlang.nif_error(:nif_not_loaded)
end
