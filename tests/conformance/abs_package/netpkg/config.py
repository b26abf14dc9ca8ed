class Settings:
    """A bag of attributes with defaults, filled in by the caller."""

    def __init__(self, **kwargs):
        self.__dict__.update(kwargs)

    def merge(self, other):
        self.__dict__.update(other.__dict__)
        return self
