"""RabbitMQ com Python: the course's helper package.

    from course_utils import setup
    curso = setup("cap02")          # broker up, fresh vhost 'curso-cap02'
    connection = curso.connect()    # pika.BlockingConnection to that vhost
"""
from .errors import CourseError, StrictModeError
from .sandbox import Chapter, setup

__version__ = "0.1.0"
__all__ = ["setup", "Chapter", "CourseError", "StrictModeError", "__version__"]
