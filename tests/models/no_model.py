X = 1


def helper():
    return X
