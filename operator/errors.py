"""Typed errors of the operator (`nest_operator`): one module, so handlers catch by kind."""


class OperatorError(Exception):
    """Base of every error the operator raises on purpose."""
