"""Builders of the tiny base models (tokenizer, LLM, speech encoder) of the embedded default.

They are saved as ordinary Hugging Face directories, so the pipeline loads them exactly as it
loads real checkpoints such as `facebook/hubert-large-ls960-ft` or `meta-llama/Llama-3.1-8B-Instruct`.
"""
