defmodule Snakepit.Caller do
  @moduledoc false
  # The caller's side of every call, for every profile (docs/architecture.md, "One call"):
  # argument normalisation, the receive/timeout/cancel loop, the stream resource and the
  # telemetry events. A profile only submits, cancels and feeds demand (the Snakepit.Pool
  # behaviour); the messages it sends to the caller follow the protocol in Snakepit.Pool.

  alias Snakepit.{CallOptions, Error, Registry, Telemetry}

  @default_timeout 60_000
  # How long a closed stream waits for its last message before it gives up on it.
  @close_grace 5_000

  @type target :: {module(), term()}

  @doc "Runs `command` on the pool named `pool` (this node's, else another node's)."
  @spec execute(atom(), term(), term(), keyword()) :: {:ok, term()} | {:error, Error.t()}
  def execute(pool, command, args, opts) do
    timeout = Keyword.get(opts, :timeout, @default_timeout)

    # With result options the submitted command is the built-in `__snakepit_call__`; telemetry
    # still names the user's command. `ndarray` is the pool's mode (finish/3: `:nx`).
    with {:ok, name} <- command_name(command),
         {:ok, {command, args}} <- CallOptions.submission(name, normalize_args(args), opts),
         {:ok, target, ndarray} <- local_or_remote(pool, command, args, opts) do
      if Telemetry.enabled?() do
        instrumented(pool, target, name, {command, args}, timeout)
      else
        call(target, command, args, timeout)
      end
      |> CallOptions.finish(opts, ndarray)
    else
      # The other node finished its pool's mode; the call's own `ndarray: :nx` is done here.
      {:remote, result} -> CallOptions.finish(result, opts, :list)
      other -> other
    end
  end

  # The local pool, or the result of the call made on another node that has the pool.
  defp local_or_remote(pool, command, args, opts) do
    case Registry.lookup_call(pool) do
      {:ok, _target, _ndarray} = local ->
        local

      {:error, _} = not_here ->
        # `command` already carries the result options (`return:`, `ndarray:`): not again over
        # there (`ndarray: :nx` is finished here).
        remote_opts = CallOptions.remote_opts(opts)

        case Snakepit.Cluster.execute_remote(pool, command, normalize_args(args), remote_opts) do
          :no_remote -> not_here
          result -> {:remote, result}
        end
    end
  end

  @doc "One call on a profile's pool handle: submit, then wait for the one reply."
  @spec call(target(), String.t(), term(), timeout()) :: {:ok, term()} | {:error, Error.t()}
  def call({mod, handle}, command, args, timeout) do
    case submit(mod, handle, command, args, nil) do
      {:ok, tag, job} ->
        receive do
          {^tag, reply} ->
            mod.finished(handle, tag, job)
            result(reply)

          {:DOWN, ^tag, _, _, reason} ->
            pool_down(reason, command)
        after
          timeout ->
            case mod.cancel(handle, tag, job) do
              :cancelled ->
                {:error,
                 Error.new(:timeout, "no result within #{timeout} ms; the call was cancelled",
                   details: %{timeout: timeout, command: command}
                 )}

              :done ->
                receive do
                  {^tag, reply} -> result(reply)
                  {:DOWN, ^tag, _, _, reason} -> pool_down(reason, command)
                end
            end
        end

      {:done, reply} ->
        result(reply)

      {:error, %Error{}} = error ->
        error
    end
  end

  # A profile whose objects live in one worker gets the calls that pass its refs pinned to
  # that worker (Snakepit.Pool's object_home/0 and submit_to/5).
  defp submit(mod, handle, command, args, window) do
    case mod.object_home() do
      :node ->
        mod.submit(handle, command, args, window)

      :worker ->
        case Snakepit.Ref.route(args) do
          {:ok, nil, args} -> mod.submit(handle, command, args, window)
          {:ok, worker, args} -> mod.submit_to(handle, worker, command, args, window)
          {:error, %Error{}} = error -> error
        end
    end
  end

  defp pool_down(reason, command) do
    {:error,
     Error.new(:pool, "the pool stopped before the call finished (#{inspect(reason)})",
       details: %{command: command}
     )}
  end

  @doc false
  # A reply body as the caller returns it. Replies of OS workers come as undecoded external
  # terms ({:etf, binary}), decoded here, in the caller, never in the pool process.
  @spec result(term()) :: {:ok, term()} | {:error, Error.t()}
  def result({:ok, _} = ok), do: ok
  def result({:error, %Error{}} = error), do: error
  def result({:error, map}) when is_map(map), do: {:error, Error.from_native(map)}
  def result({:etf, bin}), do: bin |> decode() |> result()

  # With large binaries in shared memory (Snakepit.Pool.Process.Shm).
  def result({:etf, bin, blobs}),
    do: bin |> decode() |> Snakepit.Pool.Process.Shm.resolve(blobs) |> result()

  defp decode(bin) do
    bin |> :erlang.binary_to_term([:safe]) |> Snakepit.Ref.adopt(bin)
  rescue
    ArgumentError -> {:error, Error.new(:conversion, "the worker's reply could not be decoded")}
  end

  defp value({:etf, bin}) do
    case decode(bin) do
      {:error, %Error{} = e} -> raise e
      value -> value
    end
  end

  defp value(term), do: term

  defp instrumented(pool, target, name, {command, args}, timeout) do
    meta = %{pool: pool, command: name}
    start = System.monotonic_time()
    Telemetry.execute([:snakepit, :execute, :start], %{system_time: System.system_time()}, meta)

    try do
      call(target, command, args, timeout)
    catch
      kind, reason ->
        duration = System.monotonic_time() - start

        Telemetry.execute(
          [:snakepit, :execute, :exception],
          %{duration: duration},
          Map.merge(meta, %{kind: kind, reason: reason})
        )

        :erlang.raise(kind, reason, __STACKTRACE__)
    else
      result ->
        duration = System.monotonic_time() - start

        with {:error, %Error{details: %{reason: :saturated, max_queue: max}}} <- result do
          Telemetry.execute([:snakepit, :pool, :saturated], %{max_queue: max}, %{pool: pool})
        end

        Telemetry.execute(
          [:snakepit, :execute, :stop],
          %{duration: duration},
          Map.put(meta, :result, elem(result, 0))
        )

        result
    end
  end

  ## Streams

  @doc """
  A lazy stream of the items of `command`'s iterator on `pool` (a name, or `{:target, target}`
  for a pool driven without its name). Nothing runs until it is consumed. `ndarray:` (the
  call's, else the pool's) applies to each item; `return: :ref` is a `:validation` error.
  """
  @spec stream(atom() | {:target, target()}, term(), term(), keyword()) :: Enumerable.t()
  def stream(pool, command, args, opts) do
    timeout = Keyword.get(opts, :timeout, @default_timeout)
    window = Keyword.get(opts, :window, 4)

    Stream.resource(
      fn -> start_stream(pool, command, normalize_args(args), window, opts) end,
      fn state -> next_chunk(state, timeout) end,
      &close_stream/1
    )
  end

  # The state: {mod, handle, tag, job, :running | :finished, nx?} (nx?: items become tensors).
  defp start_stream(pool, command, args, window, opts) do
    with {:ok, name} <- command_name(command),
         {:ok, {command, args}} <- CallOptions.stream_submission(name, args, opts),
         {:ok, {mod, handle}, ndarray} <- target(pool),
         {:ok, tag, job} <- submit(mod, handle, command, args, window) do
      {mod, handle, tag, job, :running, CallOptions.nx?(opts, ndarray)}
    else
      {:error, %Error{} = e} -> raise e
    end
  end

  defp target({:target, target}), do: {:ok, target, :list}
  defp target(pool), do: Registry.lookup_call(pool)

  defp next_chunk({_, _, _, _, :finished, _} = state, _timeout), do: {:halt, state}

  defp next_chunk({mod, handle, tag, job, :running, nx?} = state, timeout) do
    receive do
      {^tag, {:chunk, item}} ->
        mod.demand(handle, tag, job, 1)
        item = value(item)
        {[if(nx?, do: CallOptions.to_nx(item), else: item)], state}

      {^tag, last} when last in [:done, :closed] ->
        {:halt, finished(state)}

      {^tag, reply} ->
        # The stream's last message: close_stream (run as the exception unwinds) must not
        # wait for another.
        Process.put({__MODULE__, tag}, :finished)
        {:error, e} = result(reply)
        raise e

      {:DOWN, ^tag, _, _, reason} ->
        Process.put({__MODULE__, tag}, :finished)
        raise Error.new(:pool, "the pool stopped during the stream (#{inspect(reason)})")
    after
      timeout ->
        raise Error.new(:timeout, "no stream item within #{timeout} ms; the stream was cancelled",
                details: %{timeout: timeout}
              )
    end
  end

  defp finished({mod, handle, tag, job, _, nx?}) do
    mod.finished(handle, tag, job)
    {mod, handle, tag, job, :finished, nx?}
  end

  defp close_stream({_, _, _, _, :finished, _}), do: :ok

  defp close_stream({mod, handle, tag, job, :running, _}) do
    case Process.delete({__MODULE__, tag}) do
      :finished ->
        mod.finished(handle, tag, job)

      nil ->
        # Every profile ends a cancelled stream with one last message (or its pool's DOWN);
        # drop the chunks in flight up to it.
        mod.cancel(handle, tag, job)
        drain(tag)
        mod.finished(handle, tag, job)
    end
  end

  defp drain(tag) do
    receive do
      {^tag, {:chunk, _}} -> drain(tag)
      {^tag, _last} -> :ok
      {:DOWN, ^tag, _, _, _} -> :ok
    after
      @close_grace -> :ok
    end
  end

  ## Arguments

  @doc false
  @spec command_name(term()) :: {:ok, String.t()} | {:error, Error.t()}
  def command_name(command) when is_binary(command), do: {:ok, command}
  def command_name(command) when is_atom(command), do: {:ok, Atom.to_string(command)}

  def command_name(command),
    do: {:error, Error.new(:validation, "command must be a string, got: #{inspect(command)}")}

  @doc false
  # A keyword list means keyword arguments, as a map would.
  @spec normalize_args(term()) :: term()
  def normalize_args([{k, _} | _] = args) when is_atom(k) do
    if Keyword.keyword?(args), do: Map.new(args), else: args
  end

  def normalize_args(args), do: args
end
