"""Models used by more than one worker kind (``minilm``: the MiniLM encoder shared by
classification and NER). Imports ``shared.contracts`` and ``shared.observability`` only.
"""
