"""A different `utils` than `hello/utils.py`: both must load side by side."""

VALUE = "other"
