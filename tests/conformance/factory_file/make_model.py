from wide_net import WideNet

def make_model(): return WideNet(24, 10)
