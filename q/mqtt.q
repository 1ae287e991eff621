/ qmqtt — MQTT for q/kdb+.
/ A drop-in for KxSystems/mqtt's mqtt.q: the same .mqtt names, defaults and default callbacks, bound to the
/ library mqttkdb ($QHOME/l64/mqttkdb.so, l64arm, l32arm). q code written for KX's library keeps working.
/ Differences from KX (see README): publishing never blocks q (messages are queued for an I/O thread; up to
/ 100 QoS 1/2 messages in flight unless `reliable`/`maxInflightMessages` say otherwise); the connection
/ reconnects by itself (`autoReconnect 0b to turn off); TLS host names are verified unless `verify 0`;
/ payloads may be byte vectors and topics strings; .mqtt.disconn gets the cause as a string; disconnect
/ succeeds on a connection that is down (it stops reconnecting). At exit connections close at once: call
/ .mqtt.disconnect[ms] first to let queued messages go out.

\d .mqtt

/ ---- KX's surface ----
connX:`mqttkdb 2:(`connX;3);
init :`mqttkdb 2:(`init;1);
pubx :`mqttkdb 2:(`pub;4);
subx :`mqttkdb 2:(`sub;2);
unsub:`mqttkdb 2:(`unsub;1);
isConnected:`mqttkdb 2:(`isConnected;1);
disconnect :`mqttkdb 2:(`disconnect;1);

pub:.mqtt.pubx[;;1;0];
sub:.mqtt.subx[;1];
conn:{[tcpconn;pname;opt]connX[tcpconn;pname](enlist[`]!enlist(::)),opt};

/ Default callbacks (overwrite them). msgrcvd[topic;msg]: strings (msg a byte vector with `rcvPayload`byte);
/ msgsent[token]: long, QoS 1/2 only, when the broker acknowledged; disconn[cause]: string.
msgsent:{0N!(`msgsent;x);};
disconn:{0N!(`disconn;x);};
msgrcvd:{0N!(`msgrecvd;x;y);};

/ ---- additions ----
/ conn options beyond KX's (KX's keys all work: username password keepAliveInterval cleansession reliable
/ connectTimeout MQTTVersion maxInflightMessages lastWill* trustStore keyStore privateKey CApath
/ enabledCipherSuites enableServerCertAuth sslVersion verify ...; those that cannot be honoured fail conn
/ with an error naming the key, e.g. 'MQTTVersion: 5 unsupported):
/   queueBytes queueMessages   bounds of the publish queue (default 4 MiB, 100000 messages)
/   fullPolicy                 `error (pub signals 'queue full) `dropOldest `dropNewest
/   autoReconnect              1b (default) / 0b;  backoffMin backoffMax: ms between attempts (1000 30000)
/   alpn sni                   TLS ALPN protocol(s) (symbol or symbols) and server name
/   rcvPayload                 `char (default) or `byte: type of msg in msgrcvd
/   linger                     ms the I/O thread may collect messages before sending (default 0)
/   maxMessageSize             largest incoming message in bytes (default 1048576); a bigger one is acknowledged,
/                              discarded and counted (stats' droppedTooLarge), the connection stays up
/   batchScheduling            1b (default): the I/O thread never preempts q's main thread
/   logLevel                   as .mqtt.loglevel (process-wide)
/   spoolDir                   store-and-forward: a directory for this connection's disk spool (off unless
/                              given). When the broker is unreachable and the queue fills, the oldest queued
/                              messages go to disk and are sent, in order, once it is back - also after q restarts.
/   spoolBytes spoolFull       disk budget (default 64 MiB); `dropOldest (default) or `refuse when it is full
/   spoolSync drainRate        `never / `batch / ms between fsyncs (default 1000); backlog messages/s (default: all)
/ Several connections: connh returns a handle h (long >= 1); handle 0 means the default (conn) connection.
/   h:.mqtt.connh[`$"ssl://broker:8883";`gw1;`trustStore`keyStore`privateKey!(`ca.pem;`gw.pem;`gw.key)]
/   .mqtt.pubh[h;`t;"msg"]  .mqtt.pubxh[h;`t;"msg";qos;retain]  .mqtt.subh[h;`t]  .mqtt.subxh[h;`t;qos]
/   .mqtt.unsubh[h;`t]  .mqtt.isConnectedh h  .mqtt.disconnecth[h;timeoutMs]  .mqtt.statsh h
/ Callbacks of handle connections get the handle first; the defaults hand over to the KX-shaped ones.
connhx:`mqttkdb 2:(`connh;3);
connh:{[tcpconn;pname;opt]connhx[tcpconn;pname](enlist[`]!enlist(::)),opt};
pubxh:`mqttkdb 2:(`pubh;5);
pubh:.mqtt.pubxh[;;;1;0];
subxh:`mqttkdb 2:(`subh;3);
subh:.mqtt.subxh[;;1];
unsubh:`mqttkdb 2:(`unsubh;2);
isConnectedh:`mqttkdb 2:(`isConnectedh;1);
disconnecth:`mqttkdb 2:(`disconnecth;2);
msgrcvdh:{[h;topic;msg].mqtt.msgrcvd[topic;msg]};
msgsenth:{[h;token].mqtt.msgsent token};
disconnh:{[h;cause].mqtt.disconn cause};
/ subrefused[topic]: the broker refused a subscription made while the link was down (sub signals 'sub refused
/ when connected); counted in stats' subRefused.
subrefused:{-2"mqtt: the broker refused the subscription to ",x;};
subrefusedh:{[h;topic].mqtt.subrefused topic};

/ Batch publish: one call queues many messages (far cheaper per message than pub in a loop).
/ topic: a symbol/string for all, or a list with one topic per message; msgs: a list of strings or byte
/ vectors. Returns the tokens (longs).   .mqtt.pubbatch[`sensors/t;("21.5";"21.6");1;0b]
pubbatch :`mqttkdb 2:(`pubbatch;4);
pubbatchh:`mqttkdb 2:(`pubbatchh;5);

/ Counters: queued queuedBytes inflight sent acked dropped droppedOldest droppedNewest refusedFull
/ droppedIncoming rxPaused received reconnects bytesIn bytesOut callbackErrors wakeups socketWrites spooled spooledBytes
/ spoolOldestAgeMs spilled spoolDropped spoolBytesWritten subRefused droppedTooLarge connected lastError.
stats :`mqttkdb 2:(`stats;1);
statsh:`mqttkdb 2:(`statsh;1);

/ Log level of the library (stderr): `off`error`warn`info`debug`trace (or 0-5); (::) reads it.
loglevel:`mqttkdb 2:(`loglevel;1);
\d .

.mqtt.init[];
