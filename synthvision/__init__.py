"""synthvision: labeled synthetic image datasets for object detection.

Importing the package is cheap: torch and diffusers are imported only by the modules that need them.
"""

__version__ = "0.1.0"

__all__ = ["__version__"]
