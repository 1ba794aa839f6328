"""A stand-in for an mpi4py communicator, for tests of the distributed engines without MPI."""


class FakeComm:
    """Rank ``rank`` of ``size`` without MPI: what the engine receives is zeros and what it sends goes nowhere, so
    the values are not a real run's, but every array the engine makes is the one it makes in a real run."""

    def __init__(self, rank=0, size=1):
        self.rank, self.size = rank, size

    def Get_rank(self):
        return self.rank

    def Get_size(self):
        return self.size

    def Send(self, buf, dest, tag):
        pass

    def Recv(self, buf, source, tag):
        buf[...] = 0

    def Bcast(self, buf, root):
        pass

    def allgather(self, obj):
        return [obj] * self.size
