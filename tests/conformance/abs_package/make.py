from netpkg.model import Classifier


def build_model():
    config = Classifier.defaults()
    config.width = 6
    return Classifier(config)
