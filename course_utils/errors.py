"""Exceptions the course raises. Their messages are for learners, so they are in pt-BR."""


class CourseError(RuntimeError):
    """Base class: something the learner (or instructor) can act on."""


class BrokerNotFound(CourseError):
    """No broker answers and none could be started."""


class BrokerStartError(CourseError):
    """A native node or container was started but did not come up."""


class PortInUse(CourseError):
    """A port the broker needs is held by something that is not RabbitMQ."""


class BrokerAuthError(CourseError):
    """RABBITMQ_URL (or the management API) refused the credentials or the vhost."""


class StrictModeError(CourseError):
    """Code that RabbitMQ 3.10 accepts but RabbitMQ 4.x refuses."""
