/* MPI hello world: every rank reports its rank, the job size, its node and the MPI library. */
#include <mpi.h>
#include <stdio.h>
#include <unistd.h>

int main(int argc, char **argv)
{
    int rank, size, len;
    char host[256], lib[MPI_MAX_LIBRARY_VERSION_STRING];

    MPI_Init(&argc, &argv);
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    MPI_Comm_size(MPI_COMM_WORLD, &size);
    MPI_Get_library_version(lib, &len);
    gethostname(host, sizeof host);
    for (int i = 0; i < len; i++)
        if (lib[i] == '\n' || lib[i] == ',') { lib[i] = '\0'; break; }
    printf("Hello from rank %d of %d on %s (%s)\n", rank, size, host, lib);
    MPI_Finalize();
    return 0;
}
