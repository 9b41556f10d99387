import Config

# Test adapters live beside the tests.
config :snakepit,
  python_path: [
    Path.expand("../test/support/python", __DIR__),
    Path.expand("../test/python", __DIR__)
  ]

config :logger, level: :warning
