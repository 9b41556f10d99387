defmodule Snakepit.NDArray do
  @moduledoc """
  An n-dimensional array as one binary: crosses to Python as a NumPy array over that binary
  (no copy; read-only in Python) and comes back from NumPy results when the pool or the call
  has `ndarray: :struct` (README, "Large data").

  * `:data` — the elements, C order (row-major), native byte order, as Nx stores them.
  * `:dtype` — Nx's type names: `{:f, 16 | 32 | 64}`, `{:s, 8 | 16 | 32 | 64}`,
    `{:u, 8 | 16 | 32 | 64}`, `{:c, 64 | 128}`.
  * `:shape` — a tuple of sizes, `{}` for a scalar.

      iex> a = Snakepit.NDArray.from_list([1.0, 2.0, 3.0, 4.0], {:f, 64}, {2, 2})
      iex> {a.shape, byte_size(a.data)}
      {{2, 2}, 32}
      iex> Snakepit.NDArray.to_list(a)
      [1.0, 2.0, 3.0, 4.0]
  """

  @enforce_keys [:data, :dtype, :shape]
  defstruct [:data, :dtype, :shape]

  @type dtype :: {:f, 16 | 32 | 64} | {:s | :u, 8 | 16 | 32 | 64} | {:c, 64 | 128}
  @type t :: %__MODULE__{data: binary(), dtype: dtype(), shape: tuple()}

  @doc "An array of `dtype` and `shape` over `data` (no copy); raises if the sizes disagree."
  @spec new(binary(), dtype(), tuple()) :: t()
  def new(data, dtype, shape) when is_binary(data) and is_tuple(shape) do
    expected = size(shape) * div(bits(dtype), 8)

    if byte_size(data) != expected do
      raise ArgumentError,
            "#{byte_size(data)} bytes of data for shape #{inspect(shape)} of #{inspect(dtype)}, " <>
              "which needs #{expected}"
    end

    %__MODULE__{data: data, dtype: dtype, shape: shape}
  end

  @doc "An array from a flat list of numbers (real dtypes)."
  @spec from_list([number()], dtype(), tuple()) :: t()
  def from_list(list, dtype, shape) when is_list(list) do
    new(for(x <- list, into: <<>>, do: encode(x, dtype)), dtype, shape)
  end

  @doc "The elements as a flat list, in C order (real dtypes)."
  @spec to_list(t()) :: [number()]
  def to_list(%__MODULE__{data: data, dtype: dtype}) do
    n = bits(dtype)
    for <<chunk::bitstring-size(n) <- data>>, do: decode(chunk, dtype)
  end

  @doc """
  The array as an `%Nx.Tensor{}` (`Nx.from_binary/2` then `Nx.reshape/2`); Nx must be loaded
  (it is not a dependency of Snakepit). `ndarray: :nx` on a call returns tensors this way.
  """
  @spec to_nx(t()) :: struct()
  def to_nx(%__MODULE__{data: data, dtype: dtype, shape: shape}) do
    # apply/3: Nx is not a compile-time dependency (no "undefined module" warnings).
    nx = nx!()
    tensor = apply(nx, :from_binary, [data, dtype])
    apply(nx, :reshape, [tensor, shape])
  end

  @doc """
  An `%Nx.Tensor{}` as an array (`Nx.to_binary/1`, `Nx.type/1`, `Nx.shape/1`). Tensors given
  as call arguments cross without this, when they are on `Nx.BinaryBackend`.
  """
  @spec from_nx(struct()) :: t()
  def from_nx(tensor) do
    nx = nx!()

    new(
      apply(nx, :to_binary, [tensor]),
      apply(nx, :type, [tensor]),
      apply(nx, :shape, [tensor])
    )
  end

  @doc "Whether Nx is loaded (detected at run time, like `:telemetry`)."
  @spec nx_loaded?() :: boolean()
  def nx_loaded?, do: Code.ensure_loaded?(Nx) and function_exported?(Nx, :from_binary, 2)

  defp nx! do
    if nx_loaded?(), do: Nx, else: raise(ArgumentError, "Nx is not loaded")
  end

  @doc "The number of elements of an array of `shape`."
  @spec size(tuple()) :: non_neg_integer()
  def size(shape) when is_tuple(shape), do: shape |> Tuple.to_list() |> Enum.reduce(1, &(&1 * &2))

  defp bits({kind, n}) when kind in [:f, :s, :u, :c] and n in [8, 16, 32, 64, 128], do: n

  defp bits(dtype),
    do: raise(ArgumentError, "unsupported dtype #{inspect(dtype)} (Nx's names, e.g. {:f, 64})")

  defp encode(x, {:f, n}), do: <<x * 1.0::float-native-size(n)>>
  defp encode(x, {:s, n}), do: <<x::signed-integer-native-size(n)>>
  defp encode(x, {:u, n}), do: <<x::unsigned-integer-native-size(n)>>

  defp decode(chunk, {:f, n}), do: (<<x::float-native-size(n)>> = chunk) && x
  defp decode(chunk, {:s, n}), do: (<<x::signed-integer-native-size(n)>> = chunk) && x
  defp decode(chunk, {:u, n}), do: (<<x::unsigned-integer-native-size(n)>> = chunk) && x
end
