"""This sandbox's own `utils`: `other/` ships a different module under the same name."""

VALUE = "hello"
