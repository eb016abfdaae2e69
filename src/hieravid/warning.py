"""The category of every warning hieravid gives (a subclass of ``UserWarning``), so that they can be told
apart from other libraries' and filtered: ``warnings.filterwarnings("ignore", category=HieravidWarning)``."""


class HieravidWarning(UserWarning):
    """Something hieravid did that the caller may not expect (a budget it cannot reach exactly, a video that
    looks truncated, a timing that other processes disturbed), said without stopping."""
