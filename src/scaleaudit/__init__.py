"""scaleaudit: do large pretrained models pay off on narrow medical-imaging tasks?"""

__version__ = "0.1.0"
