"""The model adapter (gan2flow.adapters): the one place that loads and inspects a user's models and arrays.

Most of its checks are exercised through ``convert``, ``load`` and the estimators (tests/test_conversion.py,
tests/test_estimators.py); here, bad calls to the adapter itself.
"""
import pytest

from gan2flow import adapters

# --------------------------------------------------------------------------------------------------
# Reliability (issue 8): bad input to the model adapter.
# Every row of ``BAD_CALLS`` must raise the given error *before any work is done*, with a message that names
# the argument and says what was found; ``kit`` (tests/conftest.py) holds the small models and files they use.

# (id, call on the kit, error type, regex the message must match: the argument and what was found)
BAD_CALLS = [
    ("load-model-kind", lambda k: adapters.load_model(["G.keras"], "generator"), ValueError,
     r"`generator` must be a keras.Model or a path to a .keras file, got list"),
]


@pytest.mark.parametrize("call, error, message", [row[1:] for row in BAD_CALLS], ids=[row[0] for row in BAD_CALLS])
def test_bad_input_is_rejected_with_a_message_naming_it(kit, call, error, message):
    with pytest.raises(error, match=message):
        call(kit)


def test_bad_calls_table_has_unique_ids():
    ids = [row[0] for row in BAD_CALLS]
    assert len(ids) == len(set(ids))
