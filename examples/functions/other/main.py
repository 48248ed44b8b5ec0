"""Returns which `utils` module it sees."""

from utils import VALUE


def handler(event, context):
    return {"utils": VALUE}
