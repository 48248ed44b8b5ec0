"""Typed errors of the operator (`nest_operator`): one module, so handlers catch by kind."""


class OperatorError(Exception):
    """Base of every error the operator raises on purpose."""


class AlreadyBound(OperatorError):
    """A sandbox was assumed or added to a pod while the cache already holds it on a pod."""


class UnknownPod(OperatorError):
    """The scheduler cache holds no pool pod with that UID."""


class InvalidRolloutStrategy(OperatorError):
    """A RollingUpdate whose maxSurge and maxUnavailable are both zero can never progress."""
