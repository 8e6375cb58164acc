/* SPDX-License-Identifier: GPL-3.0-or-later */
/*
 * pmx-cmd.h - the `postmux` subcommands and what they share: finding the
 * config file and the plugin directories.
 */
#pragma once

#include "pmx-config.h"
#include "pmx-plugin-loader.h"
#include "pmx-queue.h"

G_BEGIN_DECLS

/* Options every subcommand that reads the config accepts. */
typedef struct {
  char  *config_path;   /* --config */
  char **plugin_dirs;   /* --plugin-dir, repeatable */
} PmxCmdCommon;

/* GOptionEntry list for PmxCmdCommon; terminated. */
const GOptionEntry *pmx_cmd_common_entries (PmxCmdCommon *common);
void                pmx_cmd_common_clear   (PmxCmdCommon *common);

G_DEFINE_AUTO_CLEANUP_CLEAR_FUNC (PmxCmdCommon, pmx_cmd_common_clear)

/* The config: --config, else $POSTMUX_CONFIG, else
 * /etc/postmux/postmux.json when it exists, else the embedded default. */
PmxConfig *pmx_cmd_load_config (PmxCmdCommon *common,
                                GPtrArray   **out_problems,
                                GError      **error);
/* For commands that only need the state dir and queue path (send, queue,
 * reload): a config whose cross-checks fail still serves, so an operator
 * editing the file never stops applications from queueing mail. */
PmxConfig *pmx_cmd_load_paths  (PmxCmdCommon *common,
                                GError      **error);
/* The path pmx_cmd_load_config() reads, or NULL for the embedded default. */
const char *pmx_cmd_config_path (PmxCmdCommon *common);

/* Plugin directories in search order: --plugin-dir, $POSTMUX_PLUGIN_PATH,
 * the config's plugin_path, the built-in directory. (transfer full) */
char     **pmx_cmd_plugin_dirs (PmxCmdCommon *common,
                                PmxConfig    *config);

/* Parse @argv with @entries; prints --help and errors. */
gboolean   pmx_cmd_parse (const char         *name,
                          const char         *parameter,
                          const char         *summary,
                          const GOptionEntry *entries,
                          const GOptionEntry *common_entries,
                          int                *argc,
                          char             ***argv);

/* A plain text message (CRLF) from a subject and body, with Date and
 * Message-ID. (transfer full) */
GBytes    *pmx_cmd_compose_message (const char        *from,
                                    const char *const *to,
                                    const char        *subject,
                                    const char        *body);

/* `postmux send --test`: one message through one transport, now. */
int        pmx_cmd_send_test (PmxCmdCommon *common,
                              const char   *transport,
                              const char   *from,
                              GPtrArray    *recipients,
                              const char   *subject,
                              const char   *body);

/* Shared by `send` and `sendmail` (pmx-cmd-submit.c). */
#define PMX_CMD_SUBMIT_ERROR (pmx_cmd_submit_error_quark ())
typedef enum {
  PMX_CMD_SUBMIT_ERROR_FAILED,
  PMX_CMD_SUBMIT_ERROR_STATE_DIR,   /* the state directory cannot be created */
} PmxCmdSubmitErrorCode;
GQuark     pmx_cmd_submit_error_quark (void);

/* CRLF line ends (LF becomes CRLF); NULL on a bare CR. (transfer full) */
GBytes    *pmx_cmd_normalize_crlf (const guint8 *data,
                                   gsize         len,
                                   GError      **error);
/* All of @path, or of stdin for NULL or "-". (transfer full) */
GBytes    *pmx_cmd_read_all       (const char   *path,
                                   GError      **error);
/* A mailbox a@b without spaces, brackets or controls. */
gboolean   pmx_cmd_valid_address  (const char   *address);
/* Queue @sub through the daemon's control socket, or straight into the
 * queue when no daemon answers (*@out_direct; @sub->ingress is then
 * "local:USER").  Returns the queue id, after the durable commit. */
char      *pmx_cmd_submit         (PmxConfig     *config,
                                   PmxSubmission *sub,
                                   gboolean      *out_duplicate,
                                   gboolean      *out_direct,
                                   GError       **error);

int pmx_cmd_serve  (int argc, char **argv);
int pmx_cmd_doctor (int argc, char **argv);
int pmx_cmd_auth   (int argc, char **argv);
int pmx_cmd_send   (int argc, char **argv);
int pmx_cmd_queue  (int argc, char **argv);
int pmx_cmd_config (int argc, char **argv);
int pmx_cmd_reload (int argc, char **argv);
int pmx_cmd_passwd   (int argc, char **argv);
int pmx_cmd_sendmail (int argc, char **argv);

G_END_DECLS
