"""``pocketvlm demo`` and the embedded default models it runs (``pocketvlm.demo.shapes``): not part of the exporter,
they use it (and the runtime) as a user would."""
