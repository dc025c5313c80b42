"""Gradio UI: compare base and adapters, manage adapters, evaluate and train, over HTTP."""
