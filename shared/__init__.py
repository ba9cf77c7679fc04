"""The project's common library, as subpackages by concern (bottom to top):

``contracts`` → ``observability`` → ``transport`` → ``models`` → ``runtime`` → ``tools``,
with ``client`` beside them on contracts and observability only. Imports only go down;
``tests/unit/test_layers.py`` enforces it.
"""
