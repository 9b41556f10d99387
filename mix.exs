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

  # `mix ci` runs what CI runs on one interpreter (scripts/test adds the benchmarks' smoke
  # runs, the other CPythons and the current-stack lane): the format checks, clippy, the Rust
  # unit tests, pytest and ExUnit with the integration tests. The Python is SNAKEPIT_PYTHON,
  # else the checkout's .venv (scripts/setup makes it).
  defp aliases do
    python = "${SNAKEPIT_PYTHON:-$PWD/.venv/bin/python}"

    [
      ci: [
        "format --check-formatted",
        "cmd cargo fmt --all -- --check",
        "cmd PYO3_PYTHON=#{python} cargo clippy --all-targets --features nif -q -- -D warnings",
        "cmd PYO3_PYTHON=#{python} cargo test -q",
        "cmd #{python} -m pytest test/python -q",
        "cmd MIX_ENV=test SNAKEPIT_PYTHON=#{python} SNAKEPIT_INTEGRATION=1 mix test --warnings-as-errors"
      ]
    ]
  end
end
