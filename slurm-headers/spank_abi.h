/*
 * mpiexec-docker: the part of Slurm's SPANK plugin ABI this project uses, written from the documented
 * interface (spank(8), "SPANK plugin API") for building without Slurm's headers installed.
 * It is used only when no <slurm/spank.h> is found; the installed header always wins.
 *
 * The numeric layout below is the stable ABI shared by Slurm 20.11 .. 25.x: opaque handle, int error
 * codes starting at 3000, context and item enumerations in their documented order.
 */
#ifndef MPIEXEC_DOCKER_SPANK_ABI_H
#define MPIEXEC_DOCKER_SPANK_ABI_H

#include <stdint.h>
#include <sys/types.h>

typedef struct spank_handle *spank_t;
typedef int (*spank_f)(spank_t handle, int argc, char *argv[]);

/* Result codes: 0 is success, failures count up from 3000. */
typedef int spank_err_t;
#define ESPANK_SUCCESS 0
enum spank_error_code {
	ESPANK_ERROR = 3000,
	ESPANK_BAD_ARG = 3001,
	ESPANK_NOT_TASK = 3002,
	ESPANK_ENV_EXISTS = 3003,
	ESPANK_ENV_NOEXIST = 3004,
	ESPANK_NOSPACE = 3005,
	ESPANK_NOT_REMOTE = 3006,
	ESPANK_NOEXIST = 3007,
	ESPANK_NOT_EXECD = 3008,
	ESPANK_NOT_AVAIL = 3009,
	ESPANK_NOT_LOCAL = 3010
};

/* Where the plugin is running. */
enum spank_context {
	S_CTX_ERROR = 0,      /* could not tell */
	S_CTX_LOCAL = 1,      /* srun */
	S_CTX_REMOTE = 2,     /* slurmstepd */
	S_CTX_ALLOCATOR = 3,  /* sbatch, salloc */
	S_CTX_SLURMD = 4,     /* slurmd */
	S_CTX_JOB_SCRIPT = 5  /* prolog, epilog */
};
typedef enum spank_context spank_context_t;

/* Items for spank_get_item(); the comment gives the variadic arguments each takes. */
enum spank_item {
	S_JOB_UID = 0,                 /* uid_t * */
	S_JOB_GID = 1,                 /* gid_t * */
	S_JOB_ID = 2,                  /* uint32_t * */
	S_JOB_STEPID = 3,              /* uint32_t * */
	S_JOB_NNODES = 4,              /* uint32_t * */
	S_JOB_NODEID = 5,              /* uint32_t * */
	S_JOB_LOCAL_TASK_COUNT = 6,    /* uint32_t * */
	S_JOB_TOTAL_TASK_COUNT = 7,    /* uint32_t * */
	S_JOB_NCPUS = 8,               /* uint16_t * */
	S_JOB_ARGV = 9,                /* int *, char *** */
	S_JOB_ENV = 10,                /* char *** */
	S_TASK_ID = 11,                /* int * */
	S_TASK_GLOBAL_ID = 12,         /* uint32_t * */
	S_TASK_EXIT_STATUS = 13,       /* int * */
	S_TASK_PID = 14,               /* pid_t * */
	S_JOB_PID_TO_GLOBAL_ID = 15,   /* pid_t, uint32_t * */
	S_JOB_PID_TO_LOCAL_ID = 16,    /* pid_t, uint32_t * */
	S_JOB_LOCAL_TO_GLOBAL_ID = 17, /* uint32_t, uint32_t * */
	S_JOB_GLOBAL_TO_LOCAL_ID = 18, /* uint32_t, uint32_t * */
	S_JOB_SUPPLEMENTARY_GIDS = 19, /* gid_t **, int * */
	S_SLURM_VERSION = 20,          /* char ** */
	S_SLURM_VERSION_MAJOR = 21,    /* char ** */
	S_SLURM_VERSION_MINOR = 22,    /* char ** */
	S_SLURM_VERSION_MICRO = 23,    /* char ** */
	S_STEP_CPUS_PER_TASK = 24,     /* uint32_t * */
	S_JOB_ALLOC_CORES = 25,        /* char ** */
	S_JOB_ALLOC_MEM = 26,          /* uint64_t * */
	S_STEP_ALLOC_CORES = 27,       /* char ** */
	S_STEP_ALLOC_MEM = 28,         /* uint64_t * */
	S_SLURM_RESTART_COUNT = 29,    /* uint32_t * */
	S_JOB_ARRAY_ID = 30,           /* uint32_t * */
	S_JOB_ARRAY_TASK_ID = 31       /* uint32_t * */
};
typedef enum spank_item spank_item_t;

/* Option callback: val from the option, its argument (or NULL), and 1 when run in slurmstepd. */
typedef int (*spank_opt_cb_f)(int val, const char *optarg, int remote);

#define SPANK_OPTION_MAXLEN 75

struct spank_option {
	char *name;          /* long option name, without the leading dashes */
	char *arginfo;       /* argument placeholder for --help, NULL when it takes none */
	char *usage;         /* one line of help */
	int has_arg;         /* 0 none, 1 required, 2 optional */
	int val;             /* passed back to cb */
	spank_opt_cb_f cb;   /* may be NULL */
};

spank_context_t spank_context(void);
int spank_remote(spank_t handle);
int spank_symbol_supported(const char *symbol);

spank_err_t spank_option_register(spank_t handle, struct spank_option *option);
spank_err_t spank_option_getopt(spank_t handle, struct spank_option *option, char **optarg);

spank_err_t spank_get_item(spank_t handle, spank_item_t item, ...);

spank_err_t spank_getenv(spank_t handle, const char *var, char *buf, int len);
spank_err_t spank_setenv(spank_t handle, const char *var, const char *val, int overwrite);
spank_err_t spank_unsetenv(spank_t handle, const char *var);

spank_err_t spank_job_control_setenv(spank_t handle, const char *name, const char *value, int overwrite);
spank_err_t spank_job_control_getenv(spank_t handle, const char *name, char *buf, int len);
spank_err_t spank_job_control_unsetenv(spank_t handle, const char *name);

const char *spank_strerror(spank_err_t err);

/* Logging into Slurm's own log (and, for srun, the user's terminal). printf-style. */
void slurm_info(const char *format, ...);
void slurm_error(const char *format, ...);
void slurm_verbose(const char *format, ...);
void slurm_debug(const char *format, ...);
void slurm_debug2(const char *format, ...);
void slurm_spank_log(const char *format, ...);

#endif
