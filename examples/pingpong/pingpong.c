/* MPI ping-pong between ranks 0 and 1: half round-trip latency and bandwidth for sizes 0 B .. 4 MiB.
 * Output, one line per size: "bytes usec MB/s". Other ranks wait at the barrier. */
#include <mpi.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int main(int argc, char **argv)
{
    int rank, size;
    MPI_Init(&argc, &argv);
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    MPI_Comm_size(MPI_COMM_WORLD, &size);
    if (size < 2) {
        if (rank == 0) fprintf(stderr, "pingpong needs at least 2 ranks\n");
        MPI_Finalize();
        return 1;
    }
    const int max = 4 << 20;
    char *buf = malloc(max);
    memset(buf, 1, max);
    if (rank == 0) printf("%10s %12s %12s\n", "bytes", "usec", "MB/s");
    for (int n = 0; n <= max; n = n ? n * 4 : 1) {
        int reps = n < 65536 ? 10000 : 500;
        MPI_Barrier(MPI_COMM_WORLD);
        for (int warm = 0; warm < 2; warm++) {
            double t0 = MPI_Wtime();
            for (int i = 0; i < reps; i++) {
                if (rank == 0) {
                    MPI_Send(buf, n, MPI_CHAR, 1, 0, MPI_COMM_WORLD);
                    MPI_Recv(buf, n, MPI_CHAR, 1, 0, MPI_COMM_WORLD, MPI_STATUS_IGNORE);
                } else if (rank == 1) {
                    MPI_Recv(buf, n, MPI_CHAR, 0, 0, MPI_COMM_WORLD, MPI_STATUS_IGNORE);
                    MPI_Send(buf, n, MPI_CHAR, 0, 0, MPI_COMM_WORLD);
                }
            }
            double half = (MPI_Wtime() - t0) / reps / 2;
            if (warm && rank == 0) printf("%10d %12.3f %12.1f\n", n, half * 1e6, n / half / 1e6);
        }
    }
    free(buf);
    MPI_Finalize();
    return 0;
}
