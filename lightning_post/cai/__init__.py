"""Constitutional AI: constitutions, prompt builders and the critique -> revision and AI-feedback loops."""
