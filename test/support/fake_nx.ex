defmodule Nx do
  @moduledoc false
  # A stand-in with the shape of Nx's API (Nx.Tensor on Nx.BinaryBackend, from_binary/2,
  # reshape/2, to_binary/1, type/1, shape/1), so the tests of `ndarray: :nx` and of tensor
  # arguments run without the Nx package (Snakepit has no hex dependencies).

  defmodule Tensor do
    @moduledoc false
    defstruct [:data, :type, :shape, names: [], vectorized_axes: []]
  end

  defmodule BinaryBackend do
    @moduledoc false
    defstruct [:state]
  end

  def from_binary(bin, type) do
    {_, bits} = type
    n = div(byte_size(bin) * 8, bits)
    %Tensor{data: %BinaryBackend{state: bin}, type: type, shape: {n}, names: [nil]}
  end

  def reshape(%Tensor{} = t, shape) when is_tuple(shape),
    do: %{t | shape: shape, names: List.duplicate(nil, tuple_size(shape))}

  def to_binary(%Tensor{data: %BinaryBackend{state: bin}}), do: bin
  def type(%Tensor{type: type}), do: type
  def shape(%Tensor{shape: shape}), do: shape
end
