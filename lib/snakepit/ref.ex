defmodule Snakepit.Ref do
  @moduledoc """
  A Python object that stays in Python, held from Elixir.

      {:ok, model} = Snakepit.execute(:hpc_pool, "load_model", %{path: "m.pkl"}, return: :ref)
      model
      #=> #Snakepit.Ref<sklearn.linear_model.LinearRegression LinearRegression() @:hpc_pool>
      {:ok, y} = Snakepit.call_method(model, "predict", [[[1.0, 2.0]]])
      {:ok, coef} = Snakepit.get_attr(model, "coef_")

  A ref comes from `return: :ref` on `Snakepit.execute/4`, `Snakepit.eval/3`,
  `Snakepit.call_method/4` or `Snakepit.get_attr/3`, or from an adapter method that returns
  `snakepit_bridge.ref(obj)` (anywhere in its result). Put a ref anywhere in the arguments of
  a later call, nested in maps and lists too, and the method receives the object itself.

  ## Lifetime

  The object lives while any Elixir process holds the ref: it can be sent to other processes
  and kept in ETS. When the last copy is garbage-collected the object is released in Python
  (the BEAM never waits for Python to do it); `Snakepit.release/1` releases it at once, and
  later use of the ref is a `:validation` error.

  ## Where the object lives

    * `:thread` pools: in the node's one interpreter; the ref works with any thread pool of
      the node (`pool:` option), recycling does not touch it, and it outlives its pool.
    * `:process` pools: in one worker OS process; every call that uses the ref runs on that
      worker. If the worker died or was recycled the call answers
      `{:error, %Snakepit.Error{category: :worker}}` ("the object was lost with its worker").

  A ref used on another node, or (`:process`) after its pool stopped, is a clear error.

  The fields are for inspection only: `type` (the Python type), `repr` (a short description,
  computed when the ref was made), `pool` (the pool that made it).
  """

  alias Snakepit.{Caller, Error, Native}

  defstruct [:resource, :pool, :type, :repr, :worker, :id]

  @typedoc "A reference to a Python object (see the moduledoc)."
  @type t :: %__MODULE__{
          resource: reference(),
          pool: atom() | nil,
          type: String.t(),
          repr: String.t(),
          worker: term() | nil,
          id: non_neg_integer() | nil
        }

  @doc false
  # The per-call result options (`return:`, `ndarray:`) as the built-ins take them.
  @spec result_options(keyword()) :: {:ok, map()} | {:error, Error.t()}
  defdelegate result_options(opts), to: Snakepit.CallOptions

  @doc "See `Snakepit.call_method/4`."
  @spec call_method(t(), String.t() | atom(), Snakepit.args(), keyword()) :: Snakepit.result()
  def call_method(ref, name, args, opts) do
    with {:ok, pool} <- pool_for(ref, opts),
         {:ok, name} <- Caller.command_name(name),
         {:ok, options} <- result_options(opts) do
      run(
        pool,
        "__snakepit_call_method__",
        [ref, name, Caller.normalize_args(args), options],
        opts
      )
    end
  end

  @doc "See `Snakepit.get_attr/3`."
  @spec get_attr(t(), String.t() | atom(), keyword()) :: Snakepit.result()
  def get_attr(ref, name, opts) do
    with {:ok, pool} <- pool_for(ref, opts),
         {:ok, name} <- Caller.command_name(name),
         {:ok, options} <- result_options(opts) do
      run(pool, "__snakepit_get_attr__", [ref, name, options], opts)
    end
  end

  @doc "See `Snakepit.decode/2`."
  @spec decode(t(), keyword()) :: Snakepit.result()
  def decode(ref, opts) do
    with {:ok, pool} <- pool_for(ref, opts),
         {:ok, options} <- result_options(opts) do
      run(pool, "__snakepit_decode__", [ref, options], opts)
    end
  end

  @doc "See `Snakepit.release/1`."
  @spec release(t()) :: :ok | {:error, Error.t()}
  def release(%__MODULE__{worker: nil, resource: resource} = ref) do
    with :ok <- local(ref) do
      Native.ref_release(resource)
      :ok
    end
  end

  def release(%__MODULE__{resource: watch} = ref) do
    with :ok <- local(ref) do
      Native.ref_watch_fire(watch)
      :ok
    end
  end

  def release(other), do: {:error, not_a_ref(other)}

  @doc false
  # `{created, released}`: :thread refs made so far and Python objects released (tests, bench).
  @spec counts() :: {non_neg_integer(), non_neg_integer()}
  def counts, do: Native.ref_counts()

  ## :worker profiles (Snakepit.Pool.Process): routing and release

  @doc false
  # Snakepit.Caller, for a profile whose objects live in one worker: the worker the refs in
  # `args` pin the call to, as `{home, keep}` (home `{pool, index, os_pid}`; keep the refs'
  # guards, which the pool holds until the call ends so that no object is dropped while a call
  # that passes it runs), or nil; and the args as they travel (each ref without its guard,
  # which cannot be encoded).
  @spec route(term()) :: {:ok, {tuple(), [reference()]} | nil, term()} | {:error, Error.t()}
  def route(args) do
    case homes(args, []) do
      [] ->
        {:ok, nil, args}

      refs ->
        case refs |> Enum.map(&home/1) |> Enum.uniq() do
          [{:error, _} = error | _] ->
            error

          [home] ->
            {:ok, {home, Enum.map(refs, & &1.resource)}, strip(args)}

          many ->
            Enum.find(many, &match?({:error, _}, &1)) ||
              {:error,
               Error.new(
                 :validation,
                 "the refs of one call must come from the same worker: their objects live " <>
                   "in different Python processes"
               )}
        end
    end
  end

  defp homes(%__MODULE__{} = ref, acc), do: [ref | acc]

  # Maps as raw maps (a MapSet's elements are its keys): never through Enumerable.
  defp homes(%{} = map, acc) when not is_struct(map) or is_map_key(map, :map),
    do: :maps.fold(fn k, v, acc -> homes(v, homes(k, acc)) end, acc, map)

  defp homes([h | t], acc), do: homes(t, homes(h, acc))
  defp homes(t, acc) when is_tuple(t), do: homes(Tuple.to_list(t), acc)
  defp homes(_, acc), do: acc

  defp home(%__MODULE__{worker: nil}) do
    {:error,
     Error.new(
       :validation,
       "this Snakepit.Ref holds an object of a :thread pool (this node's interpreter); it " <>
         "cannot be passed to a :process pool"
     )}
  end

  defp home(%__MODULE__{pool: pool, worker: {index, os_pid}} = ref) do
    case local(ref) do
      :ok -> {pool, index, os_pid}
      error -> error
    end
  end

  defp strip(%__MODULE__{} = ref), do: %{ref | resource: nil}

  defp strip(%{} = map) when not is_struct(map) or is_map_key(map, :map),
    do: map |> :maps.to_list() |> Map.new(fn {k, v} -> {strip(k), strip(v)} end)

  defp strip([h | t]), do: [strip(h) | strip(t)]

  defp strip(t) when is_tuple(t),
    do: t |> Tuple.to_list() |> Enum.map(&strip/1) |> List.to_tuple()

  defp strip(other), do: other

  @doc false
  # Snakepit.Caller, for a reply of an OS worker: each ref in it gets the guard whose
  # garbage collection tells the pool to drop the object (only replies whose encoding names
  # Snakepit.Ref are walked).
  @spec adopt(term(), binary()) :: term()
  def adopt(term, bin) do
    case :binary.match(bin, "Elixir.Snakepit.Ref") do
      :nomatch -> term
      _ -> guard(term)
    end
  end

  defp guard(%__MODULE__{resource: nil, worker: {index, os_pid}, id: id, pool: pool} = ref) do
    case Snakepit.whereis(pool) do
      nil -> ref
      pid -> %{ref | resource: Native.ref_watch(pid, {:"$snakepit_drop_ref", index, os_pid, id})}
    end
  end

  defp guard(%{} = map) when not is_struct(map) or is_map_key(map, :map),
    do: map |> :maps.to_list() |> Map.new(fn {k, v} -> {guard(k), guard(v)} end)

  defp guard([h | t]), do: [guard(h) | guard(t)]

  defp guard(t) when is_tuple(t),
    do: t |> Tuple.to_list() |> Enum.map(&guard/1) |> List.to_tuple()

  defp guard(other), do: other

  defp run(pool, command, args, opts) do
    Caller.execute(pool, command, args, Keyword.drop(opts, [:return, :pool]))
  end

  @doc false
  # The pool a call on `ref` runs on: `pool:` if given, else the pool that made it.
  @spec pool_for(term(), keyword()) :: {:ok, atom()} | {:error, Error.t()}
  def pool_for(%__MODULE__{} = ref, opts) do
    with :ok <- local(ref) do
      case {ref.worker, Keyword.get(opts, :pool) || ref.pool} do
        {_, nil} ->
          {:error, Error.new(:validation, "the ref names no pool; pass pool: to choose one")}

        {nil, pool} ->
          {:ok, pool}

        {_worker, _} ->
          if Snakepit.whereis(ref.pool),
            do: {:ok, ref.pool},
            else:
              {:error,
               Error.new(
                 :pool,
                 "the pool #{inspect(ref.pool)} that held this object is not running: the " <>
                   "object was lost with it"
               )}
      end
    end
  end

  def pool_for(other, _opts), do: {:error, not_a_ref(other)}

  defp local(%__MODULE__{resource: resource}) when is_reference(resource) do
    if node(resource) == node() do
      :ok
    else
      {:error,
       Error.new(
         :validation,
         "this Snakepit.Ref was made on node #{inspect(node(resource))}: a Python object " <>
           "cannot be used from another node (#{inspect(node())})"
       )}
    end
  end

  defp local(%__MODULE__{resource: nil, worker: {_, _}}) do
    {:error,
     Error.new(
       :pool,
       "this Snakepit.Ref's pool was not running when the ref arrived: its object is lost"
     )}
  end

  defp local(_), do: {:error, Error.new(:validation, "malformed Snakepit.Ref")}

  defp not_a_ref(other),
    do: Error.new(:validation, "expected a %Snakepit.Ref{}, got: #{inspect(other)}")

  defimpl Inspect do
    def inspect(%{type: type, repr: repr, pool: pool}, _opts) do
      desc = if repr in [nil, ""], do: type, else: "#{type} #{repr}"
      where = if pool, do: " @#{Kernel.inspect(pool)}", else: ""
      "#Snakepit.Ref<#{desc}#{where}>"
    end
  end
end
