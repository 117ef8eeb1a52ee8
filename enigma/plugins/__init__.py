"""Built-in plugins; registered through the `enigma` entry point like any third-party plugin."""
