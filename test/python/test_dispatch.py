"""snakepit_bridge._dispatch: the messages every profile gives for a failed call."""

from snakepit_bridge import ThreadSafeAdapter, tool
from snakepit_bridge import _dispatch
from snakepit_bridge._dispatch import exception_info, type_name, unknown_command


class Model(ThreadSafeAdapter):
    __thread_safe__ = True

    @tool(description="Predict")
    def predict(self, x):
        return x

    def helper(self):
        return 1


NAMES = ["ping", "predict"]


def test_unknown_command_lists_the_commands_and_suggests_the_closest():
    message = unknown_command("predcit", "Model", NAMES, Model())
    assert message.startswith('unknown command "predcit" for adapter Model')
    assert '(did you mean "predict"?)' in message
    assert message.endswith("available commands: ping, predict")


def test_a_method_that_is_not_a_command_says_how_to_make_it_one():
    message = unknown_command("helper", "Model", NAMES, Model())
    assert "the method helper exists but is not a command: mark it with @tool" in message
    assert "did you mean" not in message


def test_nothing_close_means_no_suggestion():
    message = unknown_command("zzz", "Model", NAMES)
    assert "did you mean" not in message and "available commands: ping, predict" in message


def test_exception_info_names_the_type_and_keeps_the_adapter_frames():
    def adapter_code():
        raise KeyError("k")

    try:
        adapter_code()
    except KeyError as exc:
        python_type, message, tb = exception_info(exc)
    assert (python_type, message) == ("KeyError", "'k'")
    assert tb.startswith("Traceback (most recent call last)") and "adapter_code" in tb


def test_type_name_is_qualified_outside_builtins():
    class Boom(Exception):
        pass

    assert type_name(ValueError()) == "ValueError"
    assert type_name(Boom()).endswith("test_dispatch.test_type_name_is_qualified_outside_builtins.<locals>.Boom")


def test_a_broken_str_does_not_hide_the_error():
    class Broken(Exception):
        def __str__(self):
            raise RuntimeError("no")

    assert exception_info(Broken())[1] == "<exception str() failed>"


def test_not_a_value_names_generators_and_iterators_only():
    def gen():
        yield 1

    assert _dispatch.not_a_value("g", gen()) == (
        'command "g" returned a generator: use Snakepit.execute_stream/4 to receive its items'
    )
    assert "an iterator (list_iterator)" in _dispatch.not_a_value("i", iter([1]))
    for value in (1, "text", [1], {"a": 1}, object()):
        assert _dispatch.not_a_value("v", value) is None


def test_not_an_iterator_says_what_to_return():
    dict_message = _dispatch.not_an_iterator("d", {"a": 1})
    assert dict_message.startswith("execute_stream needs a command that returns an iterator")
    assert 'command "d" returned dict' in dict_message
    assert "only its keys" in dict_message
    assert "return iter(...) of it" in _dispatch.not_an_iterator("l", [1, 2])
    assert _dispatch.not_an_iterator("n", 5).endswith(
        "returned int: use Snakepit.execute/4 for a single value"
    )
    assert "returned str: use Snakepit.execute/4" in _dispatch.not_an_iterator("s", "abc")
