"""Entry point: `python app.py` starts the Grounded-SAM studio."""

if __name__ == "__main__":
    print("The Gradio studio is not built yet (see the issues); the grounding package is importable.")
