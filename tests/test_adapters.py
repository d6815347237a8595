"""The model adapter (gan2flow.adapters): the one place that loads and inspects a user's models and arrays.

Most of its checks are exercised through ``convert``, ``load`` and the estimators (tests/test_conversion.py,
tests/test_estimators.py); here, bad calls to the adapter itself.
"""

from gan2flow import adapters

from _helpers import bad_call_tests

# --------------------------------------------------------------------------------------------------
# Reliability (issue 8): bad input to the model adapter.
# Every row of ``BAD_CALLS`` must raise the given error *before any work is done*, with a message that names
# the argument and says what was found; ``kit`` (tests/conftest.py) holds the small models and files they use.

# (id, call on the kit, error type, regex the message must match: the argument and what was found)
BAD_CALLS = [
    ("load-model-kind", lambda k: adapters.load_model(["G.keras"], "generator"), ValueError,
     r"`generator` must be a keras.Model or a path to a .keras file, got list"),
]


test_bad_input_is_rejected_with_a_message_naming_it, test_bad_calls_table_has_unique_ids = bad_call_tests(BAD_CALLS)
