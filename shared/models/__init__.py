"""Models used by more than one worker kind (``minilm``: the MiniLM encoder shared by
classification and summarization; ``hf``: what the Hugging Face engines share, a local
folder's version; ``vllm_cpu``: the CPU settings of the engines on vLLM, generation and
abstractive summaries). Imports ``shared.contracts`` and ``shared.observability`` only.
"""
