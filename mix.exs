Code.require_file("native/snakepit_native.exs", __DIR__)

defmodule Snakepit.MixProject do
  use Mix.Project

  @version "0.6.0"

  def project do
    [
      app: :snakepit,
      version: @version,
      elixir: "~> 1.14",
      start_permanent: Mix.env() == :prod,
      compilers: [:snakepit_native] ++ Mix.compilers(),
      elixirc_paths: elixirc_paths(Mix.env()),
      deps: [],
      aliases: aliases(),
      docs: [main: "readme", extras: ["README.md"]]
    ]
  end

  def application do
    [
      extra_applications: [:logger],
      mod: {Snakepit.Application, []}
    ]
  end

  defp elixirc_paths(:test), do: ["lib", "test/support"]
  defp elixirc_paths(_), do: ["lib"]

  defp aliases do
    [
      ci: ["format --check-formatted", "test --warnings-as-errors"]
    ]
  end
end
