"""Prompt-based fine-tuning with any adapter (arrives with the training issue)."""
