"""{{ cookiecutter.description }}"""

from .detector import {{ cookiecutter.class_name }}

__version__ = "0.1.0"
__all__ = ["{{ cookiecutter.class_name }}", "__version__"]
